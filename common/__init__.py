"""Shared pieces of the TaylorSeer model trees: the Taylor feature cache, CLI flags, FLOPs, I/O."""

"""torch.compile for cached models: compile what the cache wraps, not the cache.

The cache's bookkeeping is Python that changes every step (which step is full, which outputs are kept, the forecast's
weights), and a compiled graph specialises on such state: traced through, it would recompile step after step, and
``TaylorCache`` therefore keeps it out of graphs (``torch.compiler.disable``), which costs a graph break at every
cached call when a whole block is compiled. So each block class names its *regions*, the submodules or methods whose
outputs the cache records or which every step runs (attention, MLP, modulation), and :func:`compile_blocks` compiles
those in place: every region is one graph without a break, the graphs are shared by the blocks of a kind (same code,
weights as inputs), and the cache between them runs eagerly. ``cache=None`` runs the same compiled regions.

    compile_blocks(model.blocks)                    # DiTBlock.compile_regions = ("attn", "mlp", "adaLN_modulation")
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["compile_blocks", "regions"]


def regions(block: torch.nn.Module) -> list[str]:
    """The names ``block``'s class lists in ``compile_regions`` (an AttributeError names a class without): submodules,
    or methods of the block (FLUX's joint attention is a method that calls several submodules' parts)."""
    names = getattr(type(block), "compile_regions", None)
    if names is None:
        raise AttributeError(
            f"{type(block).__name__} names no compile_regions: add a class attribute listing the submodules or "
            "methods to compile"
        )
    return list(names)


def compile_blocks(blocks: Iterable[torch.nn.Module], **options) -> int:
    """Compile every region of every block in place, ``options`` passed on to torch.compile (e.g. ``backend`` or
    ``mode``): a submodule through ``nn.Module.compile``, a method by a compiled bound method set on the instance.
    Returns how many regions were compiled; the first call of each compiles it."""
    count = 0
    for block in blocks:
        for name in regions(block):
            region = getattr(block, name)
            if isinstance(region, torch.nn.Module):
                region.compile(**options)
            else:
                setattr(block, name, torch.compile(region, **options))
            count += 1
    return count

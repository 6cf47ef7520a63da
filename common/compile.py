"""torch.compile for cached models: compile what the cache wraps, not the cache.

The cache's bookkeeping is Python that changes every step (which step is full, which outputs are kept, the forecast's
weights), and a compiled graph specialises on such state: traced through, it would recompile step after step, and
``TaylorCache`` therefore keeps it out of graphs (``torch.compiler.disable``), which costs a graph break at every
cached call when a whole block is compiled. So each block class names its *regions*, the submodules whose outputs the
cache records or which every step runs (attention, MLP, modulation), and :func:`compile_blocks` compiles those in
place: every region is one graph without a break, the graphs are shared by the blocks of a kind (same code, weights
as inputs), and the cache between them runs eagerly. ``cache=None`` runs the same compiled regions.

    compile_blocks(model.blocks)                    # DiTBlock.compile_regions = ("attn", "mlp", "adaLN_modulation")
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["compile_blocks", "regions"]


def regions(block: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules ``block``'s class names in ``compile_regions`` (an AttributeError names a class without)."""
    names = getattr(type(block), "compile_regions", None)
    if names is None:
        raise AttributeError(
            f"{type(block).__name__} names no compile_regions: add a class attribute listing the submodules to compile"
        )
    return [getattr(block, name) for name in names]


def compile_blocks(blocks: Iterable[torch.nn.Module], **options) -> int:
    """Compile every region of every block in place (``nn.Module.compile``, ``options`` passed on, e.g.
    ``mode="max-autotune"``); returns how many modules were compiled. The first call of each region compiles it."""
    count = 0
    for block in blocks:
        for module in regions(block):
            module.compile(**options)
            count += 1
    return count

"""torch.compile for cached models: compile what the cache wraps, not the cache.

The cache's bookkeeping is Python that changes every step (which step is full, which outputs are kept, the forecast's
weights), and a compiled graph specialises on such state: traced through, it would recompile step after step, and
``TaylorCache`` therefore keeps it out of graphs (``torch.compiler.disable``), which costs a graph break at every
cached call when a whole block is compiled. So each block class names its *regions*, the submodules or methods whose
outputs the cache records or which every step runs (attention, MLP, modulation), and :func:`compile_blocks` compiles
those in place: every region is one graph without a break, the graphs are shared by the blocks of a kind (same code,
weights as inputs), and the cache between them runs eagerly. ``cache=None`` runs the same compiled regions.

    compile_blocks(model.blocks)                    # DiTBlock.compile_regions = ("attn", "mlp", "adaLN_modulation")
    cache = TaylorCache(config, combine=compiled_weighted_sum)   # the forecast as one fused pass per module

The forecast itself is the other thing worth compiling: eager, a weighted sum of O + 1 kept outputs makes O + 1 passes
over memory; compiled, one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import torch

__all__ = ["compile_blocks", "compiled_weighted_sum", "regions"]


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


def _sum_terms(features: list[torch.Tensor], weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = features[0].to(torch.float32) * weights[0]
    for j in range(1, len(features)):
        out = out + features[j].to(torch.float32) * weights[j]
    return out.to(dtype)


_compiled_sum = torch.compile(_sum_terms, dynamic=True)


@functools.lru_cache(maxsize=256)
def _weights_tensor(weights: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(weights, dtype=torch.float32, device=device)


def compiled_weighted_sum(
    features: Sequence[torch.Tensor], weights: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """:func:`~common.taylor_cache.weighted_sum` as one compiled kernel: every kept output is read once and the
    forecast written once (eager needs a pass per term, each reading the partial sum again), accumulated in float32.
    The weights enter as a tensor, so one graph serves every step (one per number of terms, shapes symbolic).
    Hand it to the cache: ``TaylorCache(config, combine=compiled_weighted_sum)``."""
    if len(features) == 1 and weights[0] == 1.0:
        return features[0].to(dtype)
    return _compiled_sum(list(features), _weights_tensor(tuple(weights), features[0].device), dtype)

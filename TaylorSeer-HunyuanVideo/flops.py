"""FLOPs of HunyuanVideo sampling with any caching method, counted outside the model.

Convention ``matmul``: every matrix product of one transformer forward (patch embedding, timestep/guidance/text
embeddings, the text token refiner, modulations, qkv/output projections, the attention's q @ k^T and attn @ v, MLPs,
final layer) as 2 x MACs, measured with ``torch.utils.flop_counter`` on the meta device (no weights, no memory).
Elementwise work (norms, RoPE, softmax, activations) is not counted. The reference's calflops count (reference-semantics
§4.5) is ~595.4 TFLOPs per full HYVideo-T/2-cfgdistill step at 480x640, 65 frames and 256 text tokens (20400 video +
256 text tokens, 60 blocks of ~9.92 TFLOPs). A TaylorSeer forecast step costs only what runs outside the cached
modules: the embeddings, the token refiner, every block's modulation and the final layer.

A run's FLOPs are the sum of its steps'. For every method whose decisions follow from the step alone (all but
TeaCache), :func:`hunyuan_method_flops` counts each *kind* of step once and multiplies by how often the run's schedule
has it. The kinds come from playing the whole schedule through the same cache class on a narrow stand-in of the model
(the same blocks at the tiny preset's width, on the CPU: milliseconds a step), a kind being whether the step is full
and which blocks ran; then the first step of each kind is replayed through a fresh cache on the full-size model on
the meta device and counted, and a replayed step whose kind differs is an error rather than a wrong number. (A meta
forward of the full model takes seconds: counting all 50 steps would take minutes.) Within a kind, the cost of a step
is the same for every method here: which modules run, and on how many tokens (ToCa), depends only on the layer.

TeaCache decides from each step's input, so its FLOPs depend on the run: :func:`teacache_step_flops` counts a
computed and a skipped step, and :meth:`RunFlops.from_step_counts` makes a run's FLOPs from its counts of each.

The count assumes unpadded text (every one of ``text_len`` tokens attended), as the reference's FLOPs mode does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from common.caching import CacheMethod
from common.flops import count_flops
from common.methods import MethodConfig, describe, make_cache
from common.teacache import TeaCache, TeaCacheConfig
from common.toca import ToCaConfig

from .model import HUNYUAN_VIDEO_PRESETS, HunyuanVideo, HunyuanVideoParams
from .pipeline import latent_shape

__all__ = [
    "CONVENTION",
    "RunFlops",
    "hunyuan_latent_shape",
    "hunyuan_method_flops",
    "schedule_step_kinds",
    "teacache_step_flops",
]

CONVENTION = "matmul"
StepKind = tuple[bool, tuple[int, ...]]
"""(whether the step is full, indices of the blocks whose forward ran, double blocks first)."""


@dataclass(frozen=True)
class RunFlops:
    """FLOPs of one sampling run of ``num_steps`` steps against the plain model's ``num_steps`` full steps."""

    convention: str
    method: str
    """The method's label (``common.methods.describe``)."""
    baseline_step_flops: float
    """One step of the plain model."""
    flops: float
    """The whole run."""
    num_steps: int
    full_steps: int

    @classmethod
    def from_step_counts(
        cls, method: str, baseline: float, computed: float, skipped: float, num_steps: int, full_steps: int
    ) -> RunFlops:
        """A run whose steps cost ``computed`` (``full_steps`` of them) or ``skipped`` (the others): TeaCache."""
        flops = full_steps * computed + (num_steps - full_steps) * skipped
        return cls(CONVENTION, method, baseline, flops, num_steps, full_steps)

    @property
    def baseline_flops(self) -> float:
        return self.num_steps * self.baseline_step_flops

    @property
    def speedup(self) -> float:
        return self.baseline_flops / self.flops

    def as_dict(self) -> dict:
        return {
            "convention": self.convention,
            "method": self.method,
            "full_tflops": self.baseline_flops / 1e12,
            "tflops": self.flops / 1e12,
            "speedup": self.speedup,
            "full_steps": self.full_steps,
            "forecast_steps": self.num_steps - self.full_steps,
            "full_step_tflops": self.baseline_step_flops / 1e12,
        }


def hunyuan_latent_shape(height: int, width: int, video_length: int) -> tuple[int, int, int]:
    """(T, H, W) latent grid of a ``video_length``-frame ``height`` x ``width`` video: :func:`.pipeline.latent_shape`
    without the channels (and its size checks)."""
    return latent_shape(height, width, video_length)[1:]


def model_params(model: str | HunyuanVideoParams) -> HunyuanVideoParams:
    """A preset's parameters by name, or ``model`` itself."""
    if isinstance(model, HunyuanVideoParams):
        return model
    if model not in HUNYUAN_VIDEO_PRESETS:
        raise ValueError(f"unknown HunyuanVideo preset {model!r}; choose from {sorted(HUNYUAN_VIDEO_PRESETS)}")
    return HUNYUAN_VIDEO_PRESETS[model]


def forward_inputs(
    params: HunyuanVideoParams, batch: int, latent: Sequence[int], text_len: int, device: torch.device | str
) -> dict[str, torch.Tensor | None]:
    """Zero inputs of one forward (unpadded text: ``text_mask`` None); their values never change what is counted."""
    return {
        "x": torch.zeros(batch, params.in_channels, *latent, device=device),
        "t": torch.zeros(batch, device=device),
        "text_states": torch.zeros(batch, text_len, params.text_states_dim, device=device),
        "text_mask": None,
        "text_states_2": torch.zeros(batch, params.text_states_dim_2, device=device),
        "guidance": torch.zeros(batch, device=device) if params.guidance_embed else None,
    }


def meta_model(params: HunyuanVideoParams) -> HunyuanVideo:
    with torch.device("meta"):
        return HunyuanVideo(params).eval()


def hunyuan_method_flops(
    model: str | HunyuanVideoParams,
    height: int,
    width: int,
    video_length: int,
    text_len: int,
    num_steps: int,
    method: str,
    config: MethodConfig,
    batch: int = 1,
) -> RunFlops:
    """FLOPs of a ``num_steps``-step run of ``method`` with ``config`` (``common.methods``) for a
    ``video_length``-frame ``height`` x ``width`` video of ``batch`` samples with ``text_len`` text tokens, on preset
    ``model`` (or parameters); counted on the meta device. TeaCache is a ValueError: its FLOPs depend on the run."""
    params = model_params(model)
    grid = hunyuan_latent_shape(height, width, video_length)
    full_model = meta_model(params)
    inputs = forward_inputs(params, batch, grid, text_len, "meta")
    with torch.no_grad():
        baseline = float(count_flops(lambda: full_model(**inputs)))
    label = describe(method, config)
    cache = make_cache(method, config)
    if cache is None:
        return RunFlops(CONVENTION, label, baseline, num_steps * baseline, num_steps, num_steps)
    if isinstance(cache, TeaCache):
        raise ValueError(
            "TeaCache's FLOPs depend on the run (which steps its input change lets it skip): a run reports them from "
            "its computed and skipped steps; teacache_step_flops gives the cost of each"
        )
    if isinstance(config, ToCaConfig):
        # Which tokens are fresh does not change how many: the "random" score needs a generator, which meta lacks.
        config = replace(config, score="norm")
    kinds = schedule_step_kinds(params, lambda: make_cache(method, config), num_steps)
    costs = _kind_flops(full_model, make_cache(method, config), kinds, inputs)
    flops = sum(costs[kind] for kind in kinds)
    return RunFlops(CONVENTION, label, baseline, flops, num_steps, sum(full for full, _ in kinds))


def narrow_params(params: HunyuanVideoParams) -> HunyuanVideoParams:
    """The same stack (depths, patches, guidance embedder) at the tiny preset's width: it takes the same decisions
    as ``params`` under any method whose decisions follow from the step, at a fraction of the cost."""
    tiny = HUNYUAN_VIDEO_PRESETS["HYVideo-tiny"]
    widths = ("hidden_size", "heads_num", "rope_dim_list", "text_states_dim", "text_states_dim_2")
    return replace(params, **{name: getattr(tiny, name) for name in widths})


def schedule_step_kinds(params: HunyuanVideoParams, make: Callable[[], CacheMethod], num_steps: int) -> list[StepKind]:
    """The kind of every step of a ``num_steps``-step run with the cache ``make()`` builds, from a run of the narrow
    stand-in of ``params`` (:func:`narrow_params`) on the CPU."""
    # Seeded default weights (its decisions do not depend on them), drawn without touching the caller's generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        stand_in = HunyuanVideo(narrow_params(params)).eval()
    pt, ph, pw = params.patch_size
    inputs = forward_inputs(stand_in.params, 1, (pt, 2 * ph, 2 * pw), 2, "cpu")  # 4 image and 2 text tokens
    cache = make()
    cache.reset(num_steps)
    with torch.no_grad():
        return [_run_step(stand_in, cache, step, inputs)[0] for step in range(num_steps)]


def _kind_flops(model: HunyuanVideo, cache: CacheMethod, kinds: list[StepKind], inputs: dict) -> dict[StepKind, float]:
    """FLOPs of each kind in ``kinds``, counted at its first step replayed through ``cache`` on ``model``."""
    first = {}
    for step, kind in enumerate(kinds):
        first.setdefault(kind, step)
    cache.reset(len(kinds))
    costs = {}
    with torch.no_grad():
        for kind, step in sorted(first.items(), key=lambda item: item[1]):
            replayed, flops = _run_step(model, cache, step, inputs, count=True)
            if replayed != kind:
                raise RuntimeError(
                    f"step {step} replayed as {replayed} but the schedule has {kind}: this method's step cost cannot "
                    "be counted by kind"
                )
            costs[kind] = flops
    return costs


def _run_step(
    model: HunyuanVideo, cache: CacheMethod, step: int, inputs: dict, count: bool = False
) -> tuple[StepKind, float]:
    """Step ``step`` of ``cache``'s run on ``model``: its kind, and its FLOPs when ``count``."""
    blocks = [*model.double_blocks, *model.single_blocks]
    ran: list[int] = []
    hooks = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(blocks)]
    flops = 0.0
    try:
        cache.begin_step(step)
        if count:
            flops = float(count_flops(lambda: model(**inputs, cache=cache)))
        else:
            model(**inputs, cache=cache)
    finally:
        for hook in hooks:
            hook.remove()
    return (cache.is_full_step, tuple(ran)), flops


class _ScriptedTeaCache(TeaCache):
    """TeaCache with its decisions given: on the meta device the signal has no values to decide from. The signal is
    still computed, so that its cost is counted as in a real run."""

    def __init__(self, decisions: Sequence[bool]) -> None:
        super().__init__(TeaCacheConfig(threshold=0.0))
        self._decisions = list(decisions)

    def _decide(self, signal: torch.Tensor) -> bool:
        return self._decisions[self.step]


def teacache_step_flops(
    model: str | HunyuanVideoParams, batch: int, latent: Sequence[int], text_len: int
) -> tuple[float, float, float]:
    """(plain step, TeaCache computed step, TeaCache skipped step) FLOPs of one forward of ``batch`` samples with a
    (T, H, W) latent and ``text_len`` text tokens, on the meta device. Both TeaCache steps include its signal (the
    first block's modulation); a skipped step runs the embeddings, the signal and the final layer."""
    params = model_params(model)
    full_model = meta_model(params)
    inputs = forward_inputs(params, batch, latent, text_len, "meta")
    cache = _ScriptedTeaCache([True, False])
    cache.reset(2)
    with torch.no_grad():
        baseline = float(count_flops(lambda: full_model(**inputs)))
        computed = _run_step(full_model, cache, 0, inputs, count=True)[1]
        skipped = _run_step(full_model, cache, 1, inputs, count=True)[1]
    return baseline, computed, skipped

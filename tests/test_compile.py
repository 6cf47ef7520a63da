"""torch.compile with the cache in place: each block's regions compile to graphs without a break, the blocks share
them, and a compiled TaylorSeer run gives the eager run's samples (to float32 rounding)."""

from __future__ import annotations

import pytest
import torch

from common.compile import compile_blocks, regions
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.models import DiT_models

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = DiT_models["DiT-Tiny/2"](input_size=8, num_classes=10).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05)
    return model


@torch.no_grad()
def sample(model, cache: TaylorCache | None, steps: int = 7) -> torch.Tensor:
    """A DDIM-like loop (x <- 0.9 x + 0.1 eps) with CFG, enough to chain forecasts into the next step's input."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 10])  # class 3 and the null label
    if cache is not None:
        cache.reset(steps)
    for step in range(steps):
        if cache is not None:
            cache.begin_step(step)
        t = torch.full((2,), 900 - 100 * step)
        eps = model.forward_with_cfg(x, t, y, 1.5, cache=cache)[:, :4]
        x = 0.9 * x + 0.1 * eps
    return x


def test_compiled_regions_match_eager_with_the_cache_in_place_and_never_break() -> None:
    model = tiny_dit()
    config = TaylorSeerConfig(interval=3, max_order=2, first_enhance=1)
    eager = sample(model, TaylorCache(config))
    eager_plain = sample(model, None)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_blocks(model.blocks, backend="aot_eager") == 2 * 3
    compiled = sample(model, TaylorCache(config))
    counters = torch._dynamo.utils.counters
    assert sum(counters["graph_break"].values()) == 0
    # One graph per region kind (attention, MLP, modulation), shared by both blocks: weights are graph inputs.
    assert counters["stats"]["unique_graphs"] == 3
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sample(model, None), eager_plain, rtol=1e-5, atol=1e-6)


def test_inductor_compiles_the_regions_to_eager_numbers() -> None:
    model = tiny_dit()
    config = TaylorSeerConfig(interval=3, max_order=1, first_enhance=1)
    eager = sample(model, TaylorCache(config), steps=4)
    torch._dynamo.reset()
    compile_blocks(model.blocks)
    torch.testing.assert_close(sample(model, TaylorCache(config), steps=4), eager, rtol=1e-4, atol=1e-5)


def test_a_block_without_regions_is_named() -> None:
    with pytest.raises(AttributeError, match="Linear names no compile_regions"):
        regions(torch.nn.Linear(2, 2))


def test_flux_regions_compile_without_breaks_and_match_eager() -> None:
    """FLUX's double blocks compile a method (the joint attention) besides submodules; a TaylorSeer run of the tiny
    FLUX through the real Euler loop gives the eager latents, with no graph break."""
    from flux_testing import tiny_flux

    from taylorseer_flux.sampling import denoise, get_schedule, image_ids, text_ids

    model = tiny_flux()
    params = model.params
    generator = torch.Generator().manual_seed(2)
    img = torch.randn(1, 16, params.in_channels, generator=generator)
    txt = torch.randn(1, 8, params.context_in_dim, generator=generator)
    vec = torch.randn(1, params.vec_in_dim, generator=generator)
    ids = (image_ids(1, 4, 4), text_ids(1, 8))
    config = TaylorSeerConfig(interval=3, max_order=2, first_enhance=1)

    def run() -> torch.Tensor:
        timesteps = get_schedule(7, img.shape[1])
        return denoise(model, img, ids[0], txt, ids[1], vec, timesteps, guidance=3.5, cache=TaylorCache(config))

    with torch.no_grad():
        eager = run()
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        blocks = [*model.double_blocks, *model.single_blocks]
        compiled_regions = compile_blocks(blocks, backend="aot_eager")
        assert compiled_regions == 5 * len(model.double_blocks) + 2 * len(model.single_blocks)
        compiled = run()
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_forecast_is_the_weighted_sum_with_one_graph_per_term_count(dtype) -> None:
    """The fused forecast equals the eager weighted sum (both accumulate in float32) at every step of a run, and the
    weights' changing values recompile nothing: one graph per number of kept outputs."""
    from common.compile import compiled_weighted_sum

    config = TaylorSeerConfig(interval=3, max_order=2, first_enhance=1)
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 5, 6, generator=generator).to(dtype) for _ in range(12)]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    outputs = {}
    for combine in (None, compiled_weighted_sum):
        cache = TaylorCache(config, combine=combine)
        cache.reset(12)
        outputs[combine] = []
        for step in range(12):
            cache.begin_step(step)
            outputs[combine].append(cache.apply("m", lambda step=step: features[step]))
    for eager, fused in zip(outputs[None], outputs[compiled_weighted_sum], strict=True):
        assert fused.dtype == dtype
        # bf16: the same float32 sum, rounded once to bf16 (at most one bf16 ulp apart, 2^-7 relative).
        torch.testing.assert_close(fused, eager, rtol=1e-6 if dtype == torch.float32 else 2**-7, atol=1e-6)
    # Forecasts from 2 kept outputs (after steps 0, 3) and from 3 (after 6, 9): two graphs for 6 forecast steps.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_hunyuanvideo_regions_compile_without_breaks_and_match_eager() -> None:
    """HunyuanVideo: the double blocks' joint attention is a method, the single blocks' fused body too; a TaylorSeer
    run of the tiny model (padded text, so the mask path runs) gives the eager outputs, with no graph break."""
    from test_hunyuanvideo_model import step_inputs, tiny_model

    model = tiny_model()
    config = TaylorSeerConfig(interval=3, max_order=1, first_enhance=1)

    def run() -> list[torch.Tensor]:
        cache = TaylorCache(config)
        cache.reset(5)
        outputs = []
        for step in range(5):
            cache.begin_step(step)
            outputs.append(model(**step_inputs(step), cache=cache))
        return outputs

    with torch.no_grad():
        eager = run()
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compile_blocks([*model.double_blocks, *model.single_blocks], backend="aot_eager")
        compiled = run()
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

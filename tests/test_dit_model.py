"""DiT with the TaylorSeer cache: identical when every step is full, exact Taylor values when forecasting."""

import pytest
import torch
from dit_testing import tiny_dit

from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.models import DiT, DiT_models
from taylorseer_dit.pipeline import sample_dit


def test_presets_have_the_published_sizes():
    with torch.device("meta"):
        xl = DiT_models["DiT-XL/2"](input_size=32)
        s8 = DiT_models["DiT-S/8"](input_size=32)
    assert sum(p.numel() for p in xl.parameters()) == 675_129_632
    assert (xl.depth, xl.blocks[0].attn.num_heads, xl.x_embedder.num_patches) == (28, 16, 256)
    assert (s8.depth, s8.blocks[0].mlp.fc1.out_features, s8.x_embedder.num_patches) == (12, 1536, 16)
    published = [f"DiT-{size}/{patch}" for size in ("XL", "L", "B", "S") for patch in (2, 4, 8)]
    assert set(published) <= set(DiT_models)


@pytest.mark.parametrize("ddim", [True, False])
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_interval_one_equals_no_cache(ddim, cfg_scale):
    model = tiny_dit()
    diffusion = create_diffusion("12")
    plain = sample_dit(model, diffusion, [1, 7], cfg_scale=cfg_scale, cache=None, ddim=ddim, seed=3)
    cache = TaylorCache(TaylorSeerConfig(interval=1, max_order=4, first_enhance=2))
    with_cache = sample_dit(model, diffusion, [1, 7], cfg_scale=cfg_scale, cache=cache, ddim=ddim, seed=3)
    assert torch.equal(plain.samples, with_cache.samples)
    assert (with_cache.num_full_steps, with_cache.num_forecast_steps) == (12, 0)


def test_same_seed_same_samples_and_cache_reset_between_runs():
    model = tiny_dit()
    diffusion = create_diffusion("10")
    cache = TaylorCache(TaylorSeerConfig(interval=3, max_order=2, first_enhance=2))
    first = sample_dit(model, diffusion, [2, 3], cfg_scale=2.0, cache=cache, seed=5).samples
    second = sample_dit(model, diffusion, [2, 3], cfg_scale=2.0, cache=cache, seed=5).samples
    other = sample_dit(model, diffusion, [2, 3], cfg_scale=2.0, cache=cache, seed=6).samples
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)
    assert (cache.num_full_steps, cache.num_forecast_steps) == (4, 6)  # full steps 0, 1, 4, 7; counts reset per run


def record_block_outputs(model: DiT, x, t, y) -> list[dict[str, torch.Tensor]]:
    """The attention and MLP outputs of every block of the plain model."""
    outputs = [{} for _ in model.blocks]
    handles = [
        getattr(block, name).register_forward_hook(lambda m, i, o, d=outputs[idx], n=name: d.__setitem__(n, o))
        for idx, block in enumerate(model.blocks)
        for name in ("attn", "mlp")
    ]
    with torch.no_grad():
        model(x, t, y)
    for handle in handles:
        handle.remove()
    return outputs


def test_forecast_step_uses_the_taylor_values_of_each_block():
    """Steps 0 and 1 full, step 3 forecast with O=1 (x = 2): every block's attention and MLP output must be replaced
    by f1 + 2 (f1 - f0), and everything else (gates, residuals, final layer) recomputed from the step-3 inputs."""
    model = tiny_dit(depth=3)
    y = torch.tensor([1, 4])
    inputs = {s: (torch.randn(2, 4, 8, 8), torch.tensor([900 - 100 * s] * 2)) for s in (0, 1, 3)}
    cache = TaylorCache(TaylorSeerConfig(interval=5, max_order=1, first_enhance=2))
    with torch.no_grad():
        for step in (0, 1, 3):
            cache.begin_step(step)
            out = model(*inputs[step], y, cache=cache)
    assert not cache.is_full_step

    f0 = record_block_outputs(model, *inputs[0], y)
    f1 = record_block_outputs(model, *inputs[1], y)
    forecast = [{n: f1[i][n] + 2 * (f1[i][n] - f0[i][n]) for n in ("attn", "mlp")} for i in range(3)]
    handles = [
        getattr(block, name).register_forward_hook(lambda m, i, o, v=forecast[idx][name]: v)
        for idx, block in enumerate(model.blocks)
        for name in ("attn", "mlp")
    ]
    with torch.no_grad():
        expected = model(*inputs[3], y)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert len(cache) == 2 * model.depth


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_cache_follows_model_depth(depth):
    model = tiny_dit(depth=depth)
    cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=1))
    sample_dit(model, create_diffusion("4"), [0], cfg_scale=1.0, cache=cache)
    assert len(cache) == 2 * depth
    assert {key[0] for key in cache._slots} == set(range(depth))


def test_forecast_differs_from_reuse_and_is_closer_on_a_smooth_model():
    """On a model whose blocks change smoothly with t, order 1 tracks the full-compute samples better than FORA."""
    model = tiny_dit()
    diffusion = create_diffusion("20")
    full = sample_dit(model, diffusion, [3], cfg_scale=1.0, seed=1).samples
    errors = {}
    for order in (0, 1):
        cache = TaylorCache(TaylorSeerConfig(interval=3, max_order=order, first_enhance=2))
        samples = sample_dit(model, diffusion, [3], cfg_scale=1.0, cache=cache, seed=1).samples
        errors[order] = ((samples - full).norm() / full.norm()).item()
    assert 0 < errors[1] < errors[0]


def test_cfg_guides_the_first_three_channels_and_doubles_the_batch():
    model = tiny_dit()
    x = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1)
    t = torch.tensor([500, 500])
    y = torch.tensor([3, 10])  # label 10 is the null class
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, cfg_scale=4.0)
        cond, uncond = model(x, t, y).chunk(2)
    torch.testing.assert_close(out[0, :3], uncond[0, :3] + 4.0 * (cond[0, :3] - uncond[0, :3]))
    torch.testing.assert_close(out[0, 3:], cond[0, 3:])  # 4th eps channel and the variance are unguided
    torch.testing.assert_close(out[1, :3], out[0, :3])  # both halves carry the guided eps
    torch.testing.assert_close(out[1, 3:], uncond[0, 3:])  # the rest stays per half, as upstream


def test_sample_dit_rejects_bad_labels():
    model = tiny_dit()
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        sample_dit(model, create_diffusion("2"), [10], cfg_scale=1.0)

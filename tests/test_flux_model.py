"""FLUX transformer: parity with diffusers' FluxTransformer2DModel, key mapping, TaylorSeer cache calls, presets.

Tiny fp32 models on CPU with every parameter randomised (a fixed seed), so no output is trivially zero.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from cache_testing import assert_forecast_step_replaces_cached_outputs_by_taylor_forecast
from diffusers import FluxTransformer2DModel
from flux_testing import tiny_flux
from safetensors.torch import save_file

from common.checkpoint import CheckpointError
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_flux.diffusers_format import (
    bfl_to_diffusers,
    diffusers_config,
    diffusers_to_bfl,
    flux_params_from_diffusers_config,
)
from taylorseer_flux.model import FLUX_PRESETS, Flux, FluxParams, load_flux

# Two blocks of each kind, so that block indices and the single-block cache offset are exercised.
TINY = replace(FLUX_PRESETS["flux-tiny"], depth=2, depth_single_blocks=2)
TINY_SCHNELL = replace(TINY, guidance_embed=False)
BATCH, GRID_H, GRID_W, L_TXT = 2, 3, 4, 5
TOLERANCE = 1e-5
FLUX_DEV_PARAMETERS = 11_901_408_320


def inputs(params: FluxParams, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(GRID_H), torch.arange(GRID_W), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(1, -1, 3).float()
    return {
        "img": torch.randn(BATCH, GRID_H * GRID_W, params.in_channels, generator=generator),
        "img_ids": img_ids.repeat(BATCH, 1, 1),
        "txt": torch.randn(BATCH, L_TXT, params.context_in_dim, generator=generator),
        "txt_ids": torch.zeros(BATCH, L_TXT, 3),
        "timesteps": torch.tensor([0.3, 0.95]),
        "y": torch.randn(BATCH, params.vec_in_dim, generator=generator),
        "guidance": torch.tensor([3.5, 1.0]) if params.guidance_embed else None,
    }


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def diffusers_twin(model: Flux) -> FluxTransformer2DModel:
    twin = FluxTransformer2DModel(**diffusers_config(model.params))
    twin.load_state_dict(bfl_to_diffusers(model.state_dict()), strict=True)
    return twin.eval()


@pytest.mark.parametrize("params", [TINY, TINY_SCHNELL], ids=["dev-like", "schnell-like"])
@torch.no_grad()
def test_matches_diffusers(params: FluxParams) -> None:
    model = tiny_flux(params)
    twin = diffusers_twin(model)
    x = inputs(params)
    ours = model(**x)
    # diffusers 0.42: same timestep (in [0, 1]) and raw guidance scale, both multiplied by 1000 inside; ids are 2D
    # (L, 3) (3D is deprecated), shared by the batch.
    theirs = twin(
        hidden_states=x["img"],
        encoder_hidden_states=x["txt"],
        pooled_projections=x["y"],
        timestep=x["timesteps"],
        img_ids=x["img_ids"][0],
        txt_ids=x["txt_ids"][0],
        guidance=x["guidance"],
        return_dict=False,
    )[0]
    assert ours.shape == (BATCH, GRID_H * GRID_W, params.in_channels)
    assert ours.abs().mean() > 1e-2
    assert relative_error(theirs, ours) < TOLERANCE


def test_round_trip_is_exact() -> None:
    for params in (TINY, TINY_SCHNELL):
        sd = tiny_flux(params).state_dict()
        back = diffusers_to_bfl(bfl_to_diffusers(sd))
        assert back.keys() == sd.keys()
        for key, value in sd.items():
            assert torch.equal(back[key], value), key
    twin_sd = diffusers_twin(tiny_flux(TINY)).state_dict()
    again = bfl_to_diffusers(diffusers_to_bfl(twin_sd))
    assert again.keys() == twin_sd.keys()
    assert all(torch.equal(again[k], v) for k, v in twin_sd.items())


def test_final_modulation_is_swapped() -> None:
    sd = tiny_flux(TINY).state_dict()
    bias = sd["final_layer.adaLN_modulation.1.bias"]
    shift, scale = bias.chunk(2)
    assert torch.equal(bfl_to_diffusers(sd)["norm_out.linear.bias"], torch.cat([scale, shift]))


def test_conversion_refuses_missing_and_leftover_keys() -> None:
    sd = tiny_flux(TINY).state_dict()
    broken = dict(sd)
    del broken["double_blocks.1.img_attn.qkv.bias"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)double_blocks\.1\.img_attn\.qkv\.bias.*extra\.weight"):
        bfl_to_diffusers(broken)
    theirs = bfl_to_diffusers(sd)
    del theirs["single_transformer_blocks.0.proj_mlp.weight"]
    with pytest.raises(CheckpointError, match=r"single_transformer_blocks\.0\.proj_mlp\.weight"):
        diffusers_to_bfl(theirs)


def test_gaps_in_block_indices_are_named() -> None:
    theirs = bfl_to_diffusers(tiny_flux(replace(FLUX_PRESETS["flux-tiny"], depth=3)).state_dict())
    gapped = {k: v for k, v in theirs.items() if not k.startswith("transformer_blocks.1.")}
    with pytest.raises(CheckpointError, match=r"gaps in its transformer_blocks indices: missing 1"):
        diffusers_to_bfl(gapped)


def test_diffusers_config_round_trip() -> None:
    for params in (TINY, TINY_SCHNELL, FLUX_PRESETS["flux-dev"], FLUX_PRESETS["flux-schnell"]):
        assert flux_params_from_diffusers_config(diffusers_config(params)) == params
    with pytest.raises(ValueError, match="mlp_ratio"):
        diffusers_config(replace(TINY, mlp_ratio=2.0))


def step_inputs(step: int) -> dict[str, torch.Tensor]:
    """Inputs of a pretend sampling run: the latent and the time change from step to step."""
    x = inputs(TINY, seed=10 + step)
    x["txt"] = inputs(TINY, seed=1)["txt"]
    x["y"] = inputs(TINY, seed=1)["y"]
    x["timesteps"] = torch.full((BATCH,), 1.0 - 0.1 * step)
    return x


@torch.no_grad()
def test_interval_one_cache_is_the_plain_model() -> None:
    model = tiny_flux(TINY)
    cache = TaylorCache(TaylorSeerConfig(interval=1, max_order=1))
    for step in range(3):
        cache.begin_step(step)
        x = step_inputs(step)
        assert torch.equal(model(**x, cache=cache), model(**x))
    assert len(cache) == 4 * TINY.depth + TINY.depth_single_blocks


def cached_modules(model: Flux) -> list[torch.nn.Module]:
    """The modules whose outputs TaylorSeer caches (post projection, pre gate)."""
    modules: list[torch.nn.Module] = []
    for block in model.double_blocks:
        modules += [block.img_attn.proj, block.img_mlp, block.txt_attn.proj, block.txt_mlp]
    modules += [block.linear2 for block in model.single_blocks]
    return modules


def test_forecast_step_replaces_cached_outputs_by_taylor_forecast() -> None:
    model = tiny_flux(TINY)
    attention_inputs = [b.img_attn.qkv for b in model.double_blocks] + [b.txt_attn.qkv for b in model.double_blocks]
    attention_inputs += [b.linear1 for b in model.single_blocks]
    assert_forecast_step_replaces_cached_outputs_by_taylor_forecast(
        model, cached_modules(model), attention_inputs, step_inputs
    )


def test_single_blocks_use_offset_cache_indices() -> None:
    model = tiny_flux(TINY)
    cache = TaylorCache(TaylorSeerConfig(interval=1))
    cache.begin_step(0)
    with torch.no_grad():
        model(**step_inputs(0), cache=cache)
    double = {(i, name) for i in range(TINY.depth) for name in ("img_attn", "img_mlp", "txt_attn", "txt_mlp")}
    single = {(TINY.depth + j, "total") for j in range(TINY.depth_single_blocks)}
    assert len(cache) == len(double | single)
    assert all(cache.order(key) == 0 for key in double | single)


def test_presets_parameter_counts_and_full_size_mapping() -> None:
    with torch.device("meta"):
        dev = Flux(FLUX_PRESETS["flux-dev"])
        schnell = Flux(FLUX_PRESETS["flux-schnell"])
    dev_count = sum(p.numel() for p in dev.parameters())
    assert dev_count == FLUX_DEV_PARAMETERS
    guidance_count = sum(p.numel() for p in dev.guidance_in.parameters())
    assert sum(p.numel() for p in schnell.parameters()) == dev_count - guidance_count == 11_891_178_560
    assert not any(k.startswith("guidance_in.") for k in schnell.state_dict())

    # The mapping at full size produces exactly diffusers' keys and shapes (meta tensors: no memory).
    for model in (dev, schnell):
        with torch.device("meta"):
            twin = FluxTransformer2DModel(**diffusers_config(model.params))
        expected = {k: v.shape for k, v in twin.state_dict().items()}
        converted = {k: v.shape for k, v in bfl_to_diffusers(model.state_dict()).items()}
        assert converted == expected


def test_load_flux_from_bfl_safetensors(tmp_path, monkeypatch) -> None:
    model = tiny_flux(TINY)
    path = tmp_path / "flux-tiny.safetensors"
    save_file(model.state_dict(), str(path))
    monkeypatch.setitem(FLUX_PRESETS, "tiny-dev", TINY)
    monkeypatch.setitem(FLUX_PRESETS, "tiny-schnell", TINY_SCHNELL)
    loaded = load_flux(path, "tiny-dev")
    x = inputs(TINY)
    with torch.no_grad():
        assert torch.equal(loaded(**x), model(**x))
    # A dev checkpoint into a schnell model: the guidance embedder is reported as unexpected.
    with pytest.raises(CheckpointError, match="guidance_in"):
        load_flux(path, "tiny-schnell")

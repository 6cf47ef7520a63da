"""HunyuanVideo transformer: parity with diffusers' HunyuanVideoTransformer3DModel, key mapping, loading, text
masking, TaylorSeer cache calls, presets and FLOPs.

Tiny fp32 models on CPU with every parameter randomised (a fixed seed), so no output is trivially zero; the full-size
checks build the model on the meta device (no memory).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cache_testing import assert_forecast_step_replaces_cached_outputs_by_taylor_forecast
from diffusers import HunyuanVideoTransformer3DModel
from hunyuanvideo_testing import to_diffusers_transformer
from safetensors.torch import save_file

from common.checkpoint import CheckpointError
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_hunyuanvideo.diffusers_format import (
    diffusers_config,
    diffusers_to_official,
    hunyuan_params_from_diffusers_config,
    official_to_diffusers,
)
from taylorseer_hunyuanvideo.flops import hunyuan_latent_shape
from taylorseer_hunyuanvideo.model import (
    HUNYUAN_VIDEO_PRESETS,
    HunyuanVideo,
    HunyuanVideoParams,
    load_hunyuan_video,
)

TINY = HUNYUAN_VIDEO_PRESETS["HYVideo-tiny"]
TINY_NO_GUIDANCE = replace(TINY, guidance_embed=False)
BATCH, LATENT_T, LATENT_H, LATENT_W, L_TXT = 2, 3, 4, 6, 5
REAL_TOKENS = 3  # of batch element 1 in the padded inputs
TOLERANCE = 1e-5
HYVIDEO_CFGDISTILL_PARAMETERS = 12_821_012_544


def tiny_model(params: HunyuanVideoParams = TINY, seed: int = 0) -> HunyuanVideo:
    model = HunyuanVideo(params).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = "norm" in name.split(".")[-2] and name.endswith(".weight")
            # Norm scales around 1, everything else small enough to keep activations O(1).
            param.copy_(1 + 0.1 * noise if is_norm_scale else 0.1 * noise)
    return model


def inputs(params: HunyuanVideoParams = TINY, seed: int = 1, padded: bool = False) -> dict[str, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(BATCH, L_TXT, dtype=torch.long)
    if padded:
        text_mask[1, REAL_TOKENS:] = 0
    return {
        "x": torch.randn(BATCH, params.in_channels, LATENT_T, LATENT_H, LATENT_W, generator=generator),
        "t": torch.tensor([300.0, 950.0]),
        "text_states": torch.randn(BATCH, L_TXT, params.text_states_dim, generator=generator),
        "text_mask": text_mask,
        "text_states_2": torch.randn(BATCH, params.text_states_dim_2, generator=generator),
        "guidance": torch.tensor([6000.0, 1000.0]) if params.guidance_embed else None,
    }


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def run_diffusers(twin: HunyuanVideoTransformer3DModel, x: dict) -> torch.Tensor:
    # Same conventions: timestep in [0, 1000], guidance already x 1000, mask 1 = real token.
    return twin(
        hidden_states=x["x"],
        timestep=x["t"],
        encoder_hidden_states=x["text_states"],
        encoder_attention_mask=x["text_mask"],
        pooled_projections=x["text_states_2"],
        guidance=x["guidance"],
        return_dict=False,
    )[0]


# ------------------------------------------------------------------------------------------------ diffusers parity


@pytest.mark.parametrize("padded", [False, True], ids=["full-text", "padded-text"])
@pytest.mark.parametrize("params", [TINY, TINY_NO_GUIDANCE], ids=["cfgdistill-like", "no-guidance"])
@torch.no_grad()
def test_matches_diffusers(params: HunyuanVideoParams, padded: bool) -> None:
    model = tiny_model(params)
    x = inputs(params, padded=padded)
    ours = model(**x)
    assert ours.shape == x["x"].shape
    assert ours.abs().mean() > 1e-1
    assert relative_error(ours, run_diffusers(to_diffusers_transformer(model), x)) < TOLERANCE


def test_round_trip_is_exact() -> None:
    for params in (TINY, TINY_NO_GUIDANCE):
        sd = tiny_model(params).state_dict()
        back = diffusers_to_official(official_to_diffusers(sd))
        assert back.keys() == sd.keys()
        assert all(torch.equal(back[k], v) for k, v in sd.items())
    twin_sd = to_diffusers_transformer(tiny_model()).state_dict()
    again = official_to_diffusers(diffusers_to_official(twin_sd))
    assert again.keys() == twin_sd.keys()
    assert all(torch.equal(again[k], v) for k, v in twin_sd.items())


def test_final_modulation_is_swapped_and_fused_projections_split() -> None:
    sd = tiny_model().state_dict()
    theirs = official_to_diffusers(sd)
    shift, scale = sd["final_layer.adaLN_modulation.1.bias"].chunk(2)
    assert torch.equal(theirs["norm_out.linear.bias"], torch.cat([scale, shift]))
    # The refiner's gates are (msa, mlp) in both layouts: not swapped.
    refiner = "txt_in.individual_token_refiner.blocks.1.adaLN_modulation.1.weight"
    assert torch.equal(theirs["context_embedder.token_refiner.refiner_blocks.1.norm_out.linear.weight"], sd[refiner])
    D = TINY.hidden_size
    linear1 = sd["single_blocks.0.linear1.weight"]
    assert torch.equal(theirs["single_transformer_blocks.0.attn.to_k.weight"], linear1[D : 2 * D])
    assert torch.equal(theirs["single_transformer_blocks.0.proj_mlp.weight"], linear1[3 * D :])


def test_conversion_refuses_missing_and_leftover_keys() -> None:
    sd = tiny_model().state_dict()
    broken = dict(sd)
    del broken["double_blocks.1.img_attn_qkv.bias"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)double_blocks\.1\.img_attn_qkv\.bias.*extra\.weight"):
        official_to_diffusers(broken)
    theirs = official_to_diffusers(sd)
    del theirs["single_transformer_blocks.0.proj_mlp.weight"]
    with pytest.raises(CheckpointError, match=r"single_transformer_blocks\.0\.proj_mlp\.weight"):
        diffusers_to_official(theirs)


def test_diffusers_config_round_trip_and_validation() -> None:
    for params in (TINY, TINY_NO_GUIDANCE, *HUNYUAN_VIDEO_PRESETS.values()):
        assert hunyuan_params_from_diffusers_config(diffusers_config(params)) == params
    with pytest.raises(ValueError, match="qkv biases"):
        diffusers_config(replace(TINY, qkv_bias=False))
    with pytest.raises(ValueError, match="image_condition_type"):
        hunyuan_params_from_diffusers_config({"image_condition_type": "token_replace"})
    with pytest.raises(ValueError, match="head dim"):
        replace(TINY, rope_dim_list=(4, 6, 8))
    with pytest.raises(ValueError, match="divisible"):
        replace(TINY, heads_num=3)


def test_full_size_parameter_count_and_mapping() -> None:
    with torch.device("meta"):
        model = HunyuanVideo(HUNYUAN_VIDEO_PRESETS["HYVideo-T/2-cfgdistill"])
        plain = HunyuanVideo(HUNYUAN_VIDEO_PRESETS["HYVideo-T/2"])
        twin = HunyuanVideoTransformer3DModel(**diffusers_config(model.params))
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in twin.parameters()) == HYVIDEO_CFGDISTILL_PARAMETERS
    guidance = sum(p.numel() for p in model.guidance_in.parameters())
    assert sum(p.numel() for p in plain.parameters()) == count - guidance
    # 56 top-level tensors (embedders, 2-block refiner, final layer) + 24 per double block + 8 per single block.
    assert len(model.state_dict()) == 56 + 24 * 20 + 8 * 40
    converted = {k: v.shape for k, v in official_to_diffusers(model.state_dict()).items()}
    assert converted == {k: v.shape for k, v in twin.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- text mask


@torch.no_grad()
def test_padded_text_tokens_are_ignored() -> None:
    model = tiny_model()
    x = inputs(padded=True)
    reference = model(**x)
    changed = dict(x, text_states=x["text_states"].clone())
    changed["text_states"][1, REAL_TOKENS:] = 100.0
    torch.testing.assert_close(model(**changed), reference, rtol=0, atol=0)

    # The padded element equals the same element run alone with its padding cut off.
    alone = {k: None if v is None else v[1:] for k, v in x.items()}
    alone["text_states"] = alone["text_states"][:, :REAL_TOKENS]
    alone["text_mask"] = alone["text_mask"][:, :REAL_TOKENS]
    torch.testing.assert_close(model(**alone), reference[1:], rtol=1e-5, atol=1e-6)

    real_changed = dict(x, text_states=x["text_states"].clone())
    real_changed["text_states"][1, REAL_TOKENS - 1] += 1.0
    assert relative_error(reference[1], model(**real_changed)[1]) > 1e-3


@torch.no_grad()
def test_all_ones_mask_is_no_mask() -> None:
    model = tiny_model()
    x = inputs()
    torch.testing.assert_close(model(**dict(x, text_mask=None)), model(**x), rtol=1e-6, atol=1e-6)


def test_guidance_required_for_cfgdistill() -> None:
    x = dict(inputs(), guidance=None)
    with pytest.raises(ValueError, match="guidance"), torch.no_grad():
        tiny_model()(**x)


# ------------------------------------------------------------------------------------------------------ loading


def test_load_official_pt_module_and_ema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, ema = tiny_model(seed=0), tiny_model(seed=5)
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": module.state_dict(), "ema": ema.state_dict()}, path)
    monkeypatch.setitem(HUNYUAN_VIDEO_PRESETS, "tiny-cfgdistill", TINY)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(load_hunyuan_video(path, "tiny-cfgdistill")(**x), module(**x))
        assert torch.equal(load_hunyuan_video(path, "tiny-cfgdistill", load_key="ema")(**x), ema(**x))
    loaded = load_hunyuan_video(path, "tiny-cfgdistill", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())


def test_load_official_and_diffusers_safetensors(tmp_path: Path) -> None:
    model = tiny_model()
    official, theirs = tmp_path / "official.safetensors", tmp_path / "diffusers-layout.safetensors"
    save_file(model.state_dict(), str(official))
    save_file(official_to_diffusers(model.state_dict()), str(theirs))
    x = inputs()
    with torch.no_grad():
        expected = model(**x)
        assert torch.equal(load_hunyuan_video(official, "HYVideo-tiny")(**x), expected)
        assert torch.equal(load_hunyuan_video(theirs, "HYVideo-tiny")(**x), expected)


def test_load_sharded_diffusers_folder(tmp_path: Path) -> None:
    model = tiny_model(TINY_NO_GUIDANCE)
    # A small shard size makes save_pretrained write several shards and an index.
    to_diffusers_transformer(model).save_pretrained(tmp_path / "transformer", max_shard_size="200KB")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    x = inputs(TINY_NO_GUIDANCE, padded=True)
    with torch.no_grad():
        expected = model(**x)
        # The config defines the architecture (no guidance embedder here), whatever the preset name says.
        for path in (tmp_path, tmp_path / "transformer"):
            loaded = load_hunyuan_video(path)
            assert loaded.params == TINY_NO_GUIDANCE
            assert torch.equal(loaded(**x), expected)


def test_missing_checkpoint_names_where_weights_go(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"(?s)not found.*transformers/mp_rank_00_model_states\.pt.*tencent"):
        load_hunyuan_video(tmp_path / "nowhere.pt")


def test_wrong_keys_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = tiny_model().state_dict()
    del sd["double_blocks.1.txt_mlp.fc2.bias"]
    sd["single_blocks.0.attn.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    pattern = r"(?s)missing.*double_blocks\.1\.txt_mlp\.fc2\.bias.*unexpected.*single_blocks\.0\.attn\.weight"
    with pytest.raises(CheckpointError, match=pattern):
        load_hunyuan_video(path, "HYVideo-tiny")
    # A guidance-distilled file into a preset without the guidance embedder.
    good = tmp_path / "good.safetensors"
    save_file(tiny_model().state_dict(), str(good))
    monkeypatch.setitem(HUNYUAN_VIDEO_PRESETS, "tiny-plain", TINY_NO_GUIDANCE)
    with pytest.raises(CheckpointError, match=r"(?s)unexpected.*guidance_in\.mlp\.0\.weight"):
        load_hunyuan_video(good, "tiny-plain")


# -------------------------------------------------------------------------------------------------------- cache


def step_inputs(step: int) -> dict[str, torch.Tensor | None]:
    """Inputs of a pretend sampling run: the latent and the timestep change from step to step, the text does not."""
    x = inputs(seed=1, padded=True)
    x["x"] = inputs(seed=10 + step)["x"]
    x["t"] = torch.full((BATCH,), 1000.0 - 100.0 * step)
    return x


@torch.no_grad()
def test_interval_one_cache_is_the_plain_model() -> None:
    model = tiny_model()
    cache = TaylorCache(TaylorSeerConfig(interval=1, max_order=1))
    for step in range(3):
        cache.begin_step(step)
        x = step_inputs(step)
        assert torch.equal(model(**x, cache=cache), model(**x))
    double, single = len(model.double_blocks), len(model.single_blocks)
    expected = {(i, key) for i in range(double) for key in ("img_attn", "img_mlp", "txt_attn", "txt_mlp")}
    expected |= {(double + j, "total") for j in range(single)}
    assert len(cache) == 4 * double + single == len(expected)
    assert all(cache.order(key) == 1 for key in expected)


def cached_modules(model: HunyuanVideo) -> list[torch.nn.Module]:
    """The modules whose outputs TaylorSeer caches (post projection, pre gate)."""
    modules: list[torch.nn.Module] = []
    for block in model.double_blocks:
        modules += [block.img_attn_proj, block.img_mlp, block.txt_attn_proj, block.txt_mlp]
    modules += [block.linear2 for block in model.single_blocks]
    return modules


def test_forecast_step_replaces_cached_outputs_by_taylor_forecast() -> None:
    model = tiny_model()
    attention_inputs = [b.img_attn_qkv for b in model.double_blocks] + [b.txt_attn_qkv for b in model.double_blocks]
    attention_inputs += [b.linear1 for b in model.single_blocks]
    assert_forecast_step_replaces_cached_outputs_by_taylor_forecast(
        model, cached_modules(model), attention_inputs, step_inputs
    )


# -------------------------------------------------------------------------------------------------------- FLOPs


def test_latent_shape_of_the_paper_setting() -> None:
    # reference-semantics §4.5: 480x640, 65 frames -> 17x60x80 latent -> 20400 video tokens. (The FLOPs of that
    # setting: tests/test_hunyuanvideo_sample_cli.py; of every method: tests/test_hunyuanvideo_methods.py.)
    assert hunyuan_latent_shape(480, 640, 65) == (17, 60, 80)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        hunyuan_latent_shape(480, 640, 64)

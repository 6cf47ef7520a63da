"""Mechanisms shared by the three trees: grouped cache outputs, the FLOPs probe, CPU offload; and the HunyuanVideo
and FLUX pipeline paths that use them (text trimming, prompt memo, RoPE cache, guidance, loading)."""

from __future__ import annotations

import pytest
import torch
from flux_testing import TINY_SCHNELL, save_tiny_flux_checkpoint, tiny_flux
from hunyuanvideo_testing import TINY_MODEL, TINY_TEXT_LEN, tiny_transformer, write_diffusers_checkpoint

import taylorseer_hunyuanvideo.model as hv_model
from common.flops import full_and_forecast_flops
from common.offload import on_device
from common.taylor_cache import TaylorCache, TaylorSeerConfig, cached, cached_group
from taylorseer_flux.pipeline import FluxTextToImage
from taylorseer_flux.sampling import denoise, get_schedule, image_ids, text_ids
from taylorseer_flux.weights import find_flux_weights, transformer_params
from taylorseer_hunyuanvideo.flops import hunyuan_latent_shape
from taylorseer_hunyuanvideo.pipeline import HunyuanVideoPipeline, latent_shape, trim_text_padding
from taylorseer_hunyuanvideo.scheduler import flow_match_sigmas
from taylorseer_hunyuanvideo.text_encoders import NEGATIVE_PROMPT, LlamaTextEncoder, TextEmbeddings
from taylorseer_hunyuanvideo.weights import find_model_files, load_components

PROMPT = "a red fox running in the snow at sunset"
FP32 = {"dtype": torch.float32, "text_encoder_dtype": torch.float32, "vae_dtype": torch.float32}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --------------------------------------------------------------------------------------------------- cached_group


def test_cached_group_computes_once_and_forecasts_every_key_by_hand() -> None:
    # interval 2, order 1: steps 0 and 2 full, 1 and 3 forecast.
    cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=1, first_enhance=1))
    values = {0: (1.0, 10.0), 2: (5.0, 30.0)}
    calls = []

    def compute():
        calls.append(cache.step)
        a, b = values[cache.step]
        return torch.tensor([a]), torch.tensor([b])

    outputs = []
    for step in range(4):
        cache.begin_step(step)
        outputs.append(cached_group(cache.layer(3), ("a", "b"), compute))
    assert calls == [0, 2]  # one computation per full step, none at forecasts
    # step 1: order 0, reuse (1, 10); step 3: F1 = ((5 - 1) / 2, (30 - 10) / 2) = (2, 10), x = 1 -> (7, 40).
    assert [(float(a), float(b)) for a, b in outputs] == [(1.0, 10.0), (1.0, 10.0), (5.0, 30.0), (7.0, 40.0)]
    assert cache.order((3, "a")) == 1 and cache.order((3, "b")) == 1 and len(cache) == 2


def test_cached_group_matches_separate_keys_and_runs_plain_without_cache() -> None:
    grouped = TaylorCache(TaylorSeerConfig(interval=3, max_order=2))
    separate = TaylorCache(TaylorSeerConfig(interval=3, max_order=2))
    for step in range(8):
        f = torch.tensor([step**2 + 0.5, -3.0 * step])
        grouped.begin_step(step)
        separate.begin_step(step)
        got = cached_group(grouped, ("x", "y"), lambda f=f: (f[:1], f[1:]))
        want = (cached(separate, "x", lambda f=f: f[:1]), cached(separate, "y", lambda f=f: f[1:]))
        assert torch.equal(torch.cat(got), torch.cat(want))
    assert cached_group(None, ("x", "y"), lambda: (torch.ones(1), torch.zeros(1)))[0].item() == 1.0
    grouped.reset()
    grouped.begin_step(0)
    with pytest.raises(ValueError, match="2 keys"):
        cached_group(grouped, ("x", "y"), lambda: (torch.ones(1),))


# ----------------------------------------------------------------------------------------------- FLOPs and offload


def test_full_and_forecast_flops_by_hand() -> None:
    outer, inner = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(4, 16, bias=False)
    x = torch.zeros(3, 8)

    def run(cache: TaylorCache) -> torch.Tensor:
        h = outer(x)  # always runs: 2 * 3 * 8 * 4 = 192
        return cached(cache, "inner", lambda: inner(h))  # full steps only: 2 * 3 * 4 * 16 = 384

    assert full_and_forecast_flops(run) == (192.0 + 384.0, 192.0)


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.moves: list[str] = []

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0]))
        return self


def test_on_device_moves_only_when_offloading_and_always_back() -> None:
    module = _Recorder()
    with on_device(module, torch.device("cpu"), offload=False) as placed:
        assert placed is module
    assert module.moves == []
    with pytest.raises(RuntimeError), on_device(module, torch.device("cuda"), offload=True):
        raise RuntimeError("fails while on the device")
    assert module.moves == ["cuda", "cpu"]


def test_hunyuan_latent_shape_is_the_pipelines() -> None:
    assert hunyuan_latent_shape(480, 640, 65) == latent_shape(480, 640, 65)[1:] == (17, 60, 80)
    with pytest.raises(ValueError, match="e.g. 65"):  # the pipeline's message, which names the fix
        hunyuan_latent_shape(480, 640, 64)


# ------------------------------------------------------------------------------------------------------------ FLUX


def test_denoise_hands_guidance_to_any_model_and_schnell_ignores_it() -> None:
    seen = []

    class Plain(torch.nn.Module):  # no params, no guidance_in: guidance used to be withheld from it
        def forward(self, img, guidance=None, **kwargs):
            seen.append(guidance)
            return torch.zeros_like(img)

    img = torch.zeros(2, 4, 64)
    denoise(Plain(), img, None, None, None, None, [1.0, 0.0], guidance=2.5)
    torch.testing.assert_close(seen[0], torch.full((2,), 2.5))

    schnell = tiny_flux(TINY_SCHNELL)
    generator = torch.Generator().manual_seed(0)
    img = torch.randn(1, 4, TINY_SCHNELL.in_channels, generator=generator)
    txt = torch.randn(1, 3, TINY_SCHNELL.context_in_dim, generator=generator)
    vec = torch.randn(1, TINY_SCHNELL.vec_in_dim, generator=generator)
    args = (img, image_ids(1, 2, 2), txt, text_ids(1, 3), vec, get_schedule(2, 4, shift=False))
    assert torch.equal(denoise(schnell, *args, guidance=3.5), denoise(schnell, *args, guidance=0.0))


def test_flux_from_weights_is_from_pretrained(tmp_path, monkeypatch) -> None:
    for name in ("FLUX_DEV", "FLUX_SCHNELL", "AE", "FLUX_T5", "FLUX_CLIP"):
        monkeypatch.delenv(name, raising=False)
    folder = save_tiny_flux_checkpoint(tmp_path, guidance_embed=False)
    weights = find_flux_weights("flux-schnell", folder, environ={})
    params = transformer_params(weights.transformer, "flux-schnell")
    direct = FluxTextToImage.from_weights(weights, params, "flux-schnell", max_sequence_length=16)
    assert not direct.shift and direct.components.transformer.params == params
    calls = []
    original = FluxTextToImage.from_weights.__func__

    def spy(cls, *args, **kwargs):
        calls.append((args, kwargs))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(FluxTextToImage, "from_weights", classmethod(spy))
    loaded = FluxTextToImage.from_pretrained("flux-schnell", folder, max_sequence_length=16)
    assert len(calls) == 1 and calls[0][0][2] == "flux-schnell"
    run = {"width": 32, "height": 32, "num_steps": 2}
    torch.testing.assert_close(direct(["a fox"], [1], **run).images, loaded(["a fox"], [1], **run).images)


# ---------------------------------------------------------------------------------------------------- HunyuanVideo


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    root = tmp_path_factory.mktemp("hunyuanvideo")
    folder = write_diffusers_checkpoint(root / "diffusers")
    return load_components(find_model_files(folder), TINY_MODEL, text_len=TINY_TEXT_LEN, **FP32)


def test_trimmed_text_gives_the_same_latents(components) -> None:
    pipe = HunyuanVideoPipeline.from_components(components)
    sigmas = flow_match_sigmas(3, 7.0, True)
    latents = pipe.prepare_latents(5, 32, 32, 5)
    for prompts, cfg_scale in (([PROMPT], 1.0), (["blue dog", "a dog in the snow"], 5.0)):
        text = pipe.encode_prompt(prompts)
        trimmed = trim_text_padding(text)
        real = int(text.mask.sum(dim=1).max())
        assert real < TINY_TEXT_LEN and trimmed.states.shape[1] == real
        if len(prompts) == 1:
            assert trimmed.mask is None  # no padding left: unmasked attention
        else:
            assert torch.equal(trimmed.mask, text.mask[:, :real]) and not bool(trimmed.mask.all())
        untrimmed_out = pipe.denoise(latents, text, sigmas, cfg_scale=cfg_scale)
        trimmed_out = pipe.denoise(latents, trimmed, sigmas, cfg_scale=cfg_scale)
        assert relative_error(trimmed_out, untrimmed_out) < 1e-6


def test_call_runs_the_transformer_on_trimmed_text(components, monkeypatch) -> None:
    pipe = HunyuanVideoPipeline.from_components(components)
    seen = []
    forward = pipe.transformer.forward

    def spy(x, t, text_states, text_mask, *args, **kwargs):
        seen.append((text_states.shape[1], text_mask))
        return forward(x, t, text_states, text_mask, *args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    pipe(PROMPT, height=32, width=32, video_length=5, num_inference_steps=2, seed=0)
    real = int(pipe.encode_prompt([PROMPT.strip()]).mask.sum())
    assert seen == [(real, None), (real, None)]


def test_encode_prompt_remembers_the_last_prompts(components, monkeypatch) -> None:
    pipe = HunyuanVideoPipeline.from_components(components)
    counts = {"llama": 0, "clip": 0}
    for attr, name in (("text_encoder", "llama"), ("text_encoder_2", "clip")):
        encoder = getattr(pipe, attr)
        original = encoder.encode

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(encoder, "encode", counted)
    first = pipe.encode_prompt([PROMPT])
    assert pipe.encode_prompt([PROMPT]) is first
    assert counts == {"llama": 1, "clip": 1}
    pipe.encode_prompt([NEGATIVE_PROMPT, PROMPT])  # with CFG the negative prompt is part of the key
    pipe.encode_prompt([PROMPT])
    assert counts == {"llama": 3, "clip": 3}


def test_llama_encoder_tokenizes_the_template_prefix_once(components) -> None:
    tokenizer = components.text_encoder.tokenizer
    calls = []

    class Counting:
        def __call__(self, *args, **kwargs):
            calls.append(args)
            return tokenizer(*args, **kwargs)

    encoder = LlamaTextEncoder(components.text_encoder.model, Counting(), text_len=TINY_TEXT_LEN)
    assert len(calls) == 1 and encoder.crop_start == components.text_encoder.crop_start
    assert torch.equal(encoder._prefix_ids, components.text_encoder._prefix_ids)


def test_rope_tables_are_built_once_per_grid(monkeypatch) -> None:
    model = tiny_transformer()
    calls = []
    build = hv_model.rope_frequencies

    def counted(*args, **kwargs):
        calls.append(tuple(args[0]))
        return build(*args, **kwargs)

    monkeypatch.setattr(hv_model, "rope_frequencies", counted)
    params = model.params
    x = torch.randn(1, params.in_channels, 2, 4, 4)
    text = torch.randn(1, 3, params.text_states_dim)
    pooled = torch.randn(1, params.text_states_dim_2)
    with torch.no_grad():
        first = model(x, torch.tensor([500.0]), text, None, pooled, torch.tensor([6000.0]))
        second = model(x, torch.tensor([500.0]), text, None, pooled, torch.tensor([6000.0]))
        assert calls == [(2, 2, 2)] and torch.equal(first, second)
        model.rope((1, 2, 2))
        assert calls == [(2, 2, 2), (1, 2, 2)]
    torch.testing.assert_close(model.rope((1, 2, 2))[0], build((1, 2, 2), params.rope_dim_list, params.rope_theta)[0])


def test_text_embeddings_without_mask_move() -> None:
    text = TextEmbeddings(torch.zeros(1, 2, 3), None, torch.zeros(1, 4)).to("cpu", torch.float64)
    assert text.mask is None and text.states.dtype == torch.float64


def test_refiner_mask_is_built_once_per_mask_tensor() -> None:
    refiner = tiny_transformer().txt_in.individual_token_refiner
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    first = refiner.attention_mask(mask)
    assert refiner.attention_mask(mask) is first
    # By hand: a pair attends iff both are real, key 0 always.
    assert first[0, 0].tolist() == [[True, True, False, False]] * 2 + [[True, False, False, False]] * 2
    assert refiner.attention_mask(mask.clone()) is not first  # another tensor
    same_values = refiner.attention_mask(mask)
    mask[0, 2] = 1  # modified in place: rebuilt
    rebuilt = refiner.attention_mask(mask)
    assert rebuilt is not same_values and bool(rebuilt[0, 0, 2, 2])
    assert refiner.attention_mask(None) is None
    with torch.inference_mode():
        frozen = torch.tensor([[1, 0]])
        assert refiner.attention_mask(frozen) is not refiner.attention_mask(frozen)

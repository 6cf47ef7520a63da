"""HunyuanVideo pipeline: scheduler, text encoders, VAE mapping, weight layouts, and parity with diffusers."""

import copy
import json
import re

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers import HunyuanVideoPipeline as DiffusersHunyuanVideoPipeline
from hunyuanvideo_testing import (
    LLAMA_LAYERS,
    TINY_MODEL,
    TINY_TEXT_LEN,
    tiny_vae,
    to_diffusers_transformer,
    write_diffusers_checkpoint,
    write_official_checkpoint,
)
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from common.checkpoint import CheckpointError
from common.delta_dit import DeltaDiTCache, DeltaDiTConfig
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from common.teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig
from taylorseer_hunyuanvideo.pipeline import HunyuanVideoPipeline, check_video_size, latent_shape
from taylorseer_hunyuanvideo.scheduler import euler_step, flow_match_sigmas, timesteps_from_sigmas
from taylorseer_hunyuanvideo.text_encoders import (
    NEGATIVE_PROMPT,
    PROMPT_TEMPLATE_ENCODE_VIDEO,
    PROMPT_TEMPLATES,
    UPSTREAM_CROP_START,
    LlamaTextEncoder,
    template_crop_start,
)
from taylorseer_hunyuanvideo.vae import decode_latents, official_vae_config, official_vae_state_dict
from taylorseer_hunyuanvideo.weights import check_model_files, find_model_files, load_components, load_vae

PROMPT = "a red fox running in the snow at sunset"
VIDEO = {"height": 32, "width": 32, "video_length": 5}
FP32 = {"dtype": torch.float32, "text_encoder_dtype": torch.float32, "vae_dtype": torch.float32}
# Not the defaults (7.0 and 6.0) of either pipeline, so that an argument that went unused cannot pass the parity test.
FLOW_SHIFT, EMBEDDED_GUIDANCE = 5.0, 5.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Both layouts of the same tiny weights, written once for the module."""
    root = tmp_path_factory.mktemp("hunyuanvideo")
    return {
        "diffusers": write_diffusers_checkpoint(root / "diffusers"),
        "official": write_official_checkpoint(root / "ckpts"),
    }


@pytest.fixture(scope="module")
def components(checkpoints):
    return load_components(find_model_files(checkpoints["diffusers"]), TINY_MODEL, text_len=TINY_TEXT_LEN, **FP32)


@pytest.fixture(scope="module")
def pipe(components):
    return HunyuanVideoPipeline.from_components(components)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------------------------------- scheduler


def test_sigmas_by_hand():
    # linspace(1, 0, 3) = [1, 0.5, 0]; shift 7: 0.5 -> 7 * 0.5 / (1 + 6 * 0.5) = 0.875.
    torch.testing.assert_close(flow_match_sigmas(2, shift=7.0, reverse=True), torch.tensor([1.0, 0.875, 0.0]))
    torch.testing.assert_close(flow_match_sigmas(2, shift=7.0, reverse=False), torch.tensor([0.0, 0.125, 1.0]))
    torch.testing.assert_close(timesteps_from_sigmas(flow_match_sigmas(2, 7.0)), torch.tensor([1000.0, 875.0]))
    torch.testing.assert_close(flow_match_sigmas(4, shift=1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    x, v = torch.ones(3), torch.full((3,), 2.0)
    torch.testing.assert_close(euler_step(x, v, 1.0, 0.875), torch.full((3,), 0.75))  # x + (0.875 - 1) * 2


@pytest.mark.parametrize("num_steps", [1, 6, 50])
def test_reverse_schedule_matches_diffusers_flow_match_euler(num_steps):
    """diffusers' HunyuanVideoPipeline: FlowMatchEulerDiscreteScheduler(shift=7) given linspace(1, 0, n+1)[:-1]."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])
    sigmas = flow_match_sigmas(num_steps, shift=7.0, reverse=True)
    torch.testing.assert_close(sigmas, scheduler.sigmas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(timesteps_from_sigmas(sigmas), scheduler.timesteps, rtol=1e-6, atol=1e-4)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=generator)
    ours = x.clone()
    scheduler.set_begin_index(0)
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(2, 3, generator=generator)
        x = scheduler.step(v, t, x, return_dict=False)[0]
        ours = euler_step(ours, v, sigmas[i], sigmas[i + 1])
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)


def test_without_reverse_the_time_variable_is_mirrored():
    """Non-reverse sampling of g equals reverse sampling of f(x, t) = -g(x, 1000 - t) (scheduler.py docstring)."""

    def g(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(x * (1 + t / 1000)) - 0.3 * x

    def sample(model, reverse: bool) -> torch.Tensor:
        sigmas = flow_match_sigmas(8, shift=7.0, reverse=reverse)
        x = torch.linspace(-2, 2, 11)
        for i, t in enumerate(timesteps_from_sigmas(sigmas)):
            x = euler_step(x, model(x, t), sigmas[i], sigmas[i + 1])
        return x

    mirrored = sample(lambda x, t: -g(x, 1000 - t), reverse=True)
    torch.testing.assert_close(sample(g, reverse=False), mirrored, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sample(g, reverse=True), mirrored, atol=1e-2)  # the flag matters


# ------------------------------------------------------------------------------------------------ text encoders

LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# LLaMA-3's pre-tokenizer regex (tiktoken cl100k-style): words with their leading space, 1-3 digits, punctuation runs.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama3_like_tokenizer() -> PreTrainedTokenizerFast:
    """LLaMA-3's special tokens, BOS and pre-tokenizer, with one vocabulary entry per pre-token of the templates.

    The real 128k-token vocabulary holds every word, digit and punctuation run of the templates as one token, so
    this tokenizer splits the templates exactly as LLaMA-3 does (the ids differ, which the crop does not see).
    """
    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    specials = "(" + "|".join(map(re.escape, LLAMA3_SPECIAL_TOKENS)) + ")"
    pieces = {
        piece
        for template in PROMPT_TEMPLATES.values()
        for part in re.split(specials, template.replace("{}", ""))
        if part and part not in LLAMA3_SPECIAL_TOKENS
        for piece, _ in split.pre_tokenize_str(part)
    }
    vocab = {token: i for i, token in enumerate(["<unk>", *LLAMA3_SPECIAL_TOKENS, *sorted(pieces)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = split
    tokenizer.add_special_tokens(list(LLAMA3_SPECIAL_TOKENS))
    bos = LLAMA3_SPECIAL_TOKENS[0]
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, unk_token="<unk>", pad_token="<unk>")


def test_computed_crop_reproduces_upstreams_95_for_llama3():
    tokenizer = llama3_like_tokenizer()
    for name, template in PROMPT_TEMPLATES.items():
        assert template_crop_start(tokenizer, template) == UPSTREAM_CROP_START[name]  # 95 (video), 36 (image)
    # The structure behind 95: 10 special/header tokens + 85 instruction tokens.
    prefix = PROMPT_TEMPLATE_ENCODE_VIDEO.split("{}")[0]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prefix)["input_ids"])
    assert tokens[:5] == ["<|begin_of_text|>", "<|start_header_id|>", "system", "<|end_header_id|>", "\n\n"]
    assert tokens[-5:] == ["<|eot_id|>", "<|start_header_id|>", "user", "<|end_header_id|>", "\n\n"]
    instructions = tokens[5:-5]
    assert len(instructions) == 85 and instructions[:3] == ["Describe", " the", " video"] and instructions[-1] == ":"


def tiny_llama_tokens(encoder: LlamaTextEncoder, prompt: str) -> tuple[torch.Tensor, int, int]:
    """(input_ids (1, crop + text_len), crop, number of prompt tokens incl. the closing <|eot_id|>), by hand."""
    tokenizer = encoder.tokenizer
    prefix, suffix = PROMPT_TEMPLATE_ENCODE_VIDEO.split("{}")
    head = tokenizer(prefix)["input_ids"]  # BOS + template prefix
    body = (
        tokenizer(prompt, add_special_tokens=False)["input_ids"]
        + tokenizer(suffix, add_special_tokens=False)["input_ids"]
    )
    ids = head + body + [tokenizer.pad_token_id] * (encoder.text_len - len(body))
    return torch.tensor([ids]), len(head), len(body)


@pytest.mark.parametrize("skip, final_norm", [(2, False), (1, True), (0, False)])
def test_llm_states_are_the_cropped_skip_layer_output(components, skip, final_norm):
    """Hand computation: a copy of the LLM cut after layer L - skip (no final norm unless asked) on the hand-made
    token sequence, its first ``crop`` positions dropped."""
    model, tokenizer = components.text_encoder.model, components.text_encoder.tokenizer
    encoder = LlamaTextEncoder(
        model, tokenizer, TINY_TEXT_LEN, hidden_state_skip_layer=skip, apply_final_norm=final_norm
    )
    states, mask = encoder.encode([PROMPT])

    ids, crop, length = tiny_llama_tokens(encoder, PROMPT)
    assert crop == encoder.crop_start and 0 < length < TINY_TEXT_LEN
    attention = (torch.arange(ids.shape[1]) < crop + length).long()[None]
    cut = copy.deepcopy(model)
    cut.layers = cut.layers[: LLAMA_LAYERS - skip]
    if skip > 0 and not final_norm:
        cut.norm = torch.nn.Identity()
    with torch.no_grad():
        expected = cut(input_ids=ids, attention_mask=attention).last_hidden_state[:, crop:]
    assert states.shape == (1, TINY_TEXT_LEN, model.config.hidden_size)
    torch.testing.assert_close(states, expected, rtol=1e-5, atol=1e-6)
    assert mask.tolist() == [[1] * length + [0] * (TINY_TEXT_LEN - length)]


def test_long_prompts_are_truncated_to_text_len(components):
    encoder = components.text_encoder
    states, mask = encoder.encode([" ".join(["cat"] * 40), "dog"])
    assert states.shape[:2] == mask.shape == (2, TINY_TEXT_LEN)
    assert mask[0].all() and mask[1].sum() == 1 + 3  # "dog" and the template's closing <|eot_id|> (3 tiny tokens)


def test_skip_layer_beyond_the_llm_depth_is_refused(components):
    with pytest.raises(ValueError, match=r"hidden_state_skip_layer must be in \[0, 3\]"):
        LlamaTextEncoder(components.text_encoder.model, components.text_encoder.tokenizer, hidden_state_skip_layer=4)


def test_clip_pooled_vector_ignores_the_mask(components):
    """Upstream passes CLIP's attention mask, diffusers does not: causal attention makes them equal."""
    clip = components.text_encoder_2
    pooled = clip.encode([PROMPT, "cat"])
    batch = clip.tokenizer([PROMPT, "cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        unmasked = clip.model(input_ids=batch["input_ids"]).pooler_output
    assert pooled.shape == (2, clip.model.config.hidden_size)
    torch.testing.assert_close(pooled, unmasked, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- diffusers oracle


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_same_video_as_diffusers_hunyuan_video_pipeline(components, pipe, cfg_scale):
    """Same components (our transformer converted by official_to_diffusers), prompt, seed, steps, shift, embedded
    guidance, template and crop: the same text embeddings, latents and video.

    Two documented differences remain, each float rounding only: diffusers runs CFG as two forwards where we batch
    [uncond, cond], and its CLIP call omits the attention mask (no effect, see the CLIP test). Text padding is
    handled alike (excluded as keys), so nothing else differs.
    """
    diffusers_pipe = DiffusersHunyuanVideoPipeline(
        text_encoder=components.text_encoder.model,
        tokenizer=components.text_encoder.tokenizer,
        transformer=to_diffusers_transformer(components.transformer),
        vae=components.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT),
        text_encoder_2=components.text_encoder_2.model,
        tokenizer_2=components.text_encoder_2.tokenizer,
    )
    diffusers_pipe.set_progress_bar_config(disable=True)
    template = {"template": PROMPT_TEMPLATE_ENCODE_VIDEO, "crop_start": pipe.text_encoder.crop_start}

    states, pooled, mask = diffusers_pipe.encode_prompt(
        PROMPT, prompt_template=template, max_sequence_length=TINY_TEXT_LEN, device=torch.device("cpu")
    )
    text = pipe.encode_prompt([PROMPT])
    torch.testing.assert_close(text.states, states, rtol=0, atol=0)
    torch.testing.assert_close(text.mask, mask.long(), rtol=0, atol=0)
    torch.testing.assert_close(text.pooled, pooled, rtol=1e-6, atol=1e-7)

    ours = pipe(
        PROMPT,
        **VIDEO,
        num_inference_steps=4,
        seed=3,
        flow_shift=FLOW_SHIFT,
        embedded_guidance_scale=EMBEDDED_GUIDANCE,
        cfg_scale=cfg_scale,
        negative_prompt="blue dog",
    )

    def run_diffusers(output_type: str) -> torch.Tensor:
        extra = {"true_cfg_scale": cfg_scale, "negative_prompt": "blue dog"} if cfg_scale > 1 else {}
        return diffusers_pipe(
            prompt=PROMPT,
            height=VIDEO["height"],
            width=VIDEO["width"],
            num_frames=VIDEO["video_length"],
            num_inference_steps=4,
            guidance_scale=EMBEDDED_GUIDANCE,
            generator=torch.Generator().manual_seed(3),  # same CPU stream as ours on the CPU
            prompt_template=template,
            max_sequence_length=TINY_TEXT_LEN,
            output_type=output_type,
            **extra,
        ).frames[0]

    assert relative_error(ours.latents, run_diffusers("latent")) < 1e-5
    frames = run_diffusers("pt")  # (T, C, H, W) in [0, 1]
    ours_frames = (ours.video / 2 + 0.5).clamp(0, 1).permute(1, 0, 2, 3)
    assert ours.video.shape == (3, 5, 32, 32)
    torch.testing.assert_close(ours_frames, frames, rtol=0, atol=2e-5)
    assert ours_frames.std() > 0.1  # a real video, not a constant


# ----------------------------------------------------------------------------------------------- the pipeline


def test_interval_one_equals_no_cache_exactly(pipe):
    plain = pipe(PROMPT, **VIDEO, num_inference_steps=3, seed=5)
    cached = pipe(PROMPT, **VIDEO, num_inference_steps=3, seed=5, cache=TaylorCache(TaylorSeerConfig(interval=1)))
    torch.testing.assert_close(cached.video, plain.video, rtol=0, atol=0)
    torch.testing.assert_close(cached.latents, plain.latents, rtol=0, atol=0)
    assert (cached.num_full_steps, cached.num_forecast_steps) == (3, 0)


def test_taylorseer_is_close_to_full_compute_and_resets_per_video(pipe):
    full = pipe(PROMPT, **VIDEO, num_inference_steps=6, seed=5)
    cache = TaylorCache(TaylorSeerConfig(interval=5, max_order=1, first_enhance=1))
    steps = []
    first = pipe(PROMPT, **VIDEO, num_inference_steps=6, seed=5, cache=cache, on_step=lambda i, t, f: steps.append(f))
    assert steps == [True, False, False, False, False, True]  # E=1, N=5: steps 0 and 5 full
    assert (first.num_full_steps, first.num_forecast_steps) == (2, 4)
    assert 1e-4 < relative_error(first.latents, full.latents) < 0.1
    assert 0 < relative_error(first.video, full.video) < 0.1
    again = pipe(PROMPT, **VIDEO, num_inference_steps=6, seed=5, cache=cache)  # the same cache object, reset
    torch.testing.assert_close(again.video, first.video, rtol=0, atol=0)


def test_any_method_is_reset_with_the_step_count_before_each_video(pipe):
    """The sampler is the same for every method: reset(num_steps) before each video (Δ-DiT's boundary and TeaCache's
    always-computed last step need the count), and on_step reports what each step did, TeaCache's decisions too."""
    delta = DeltaDiTCache(DeltaDiTConfig(interval=3, cached_blocks=2, boundary=0.5))
    full_steps = pipe(PROMPT, **VIDEO, num_inference_steps=6, seed=5, cache=delta).num_full_steps
    assert delta.num_steps == 6 and full_steps == 2  # steps 0 and 3
    cache = TeaCache(TeaCacheConfig(threshold=0.15, coefficients=TEACACHE_COEFFICIENTS["hunyuanvideo"]))
    steps = []
    first = pipe(PROMPT, **VIDEO, num_inference_steps=6, seed=5, cache=cache, on_step=lambda i, t, f: steps.append(f))
    assert steps[0] and steps[-1] and not all(steps)
    assert (first.num_full_steps, first.num_forecast_steps) == (steps.count(True), steps.count(False))
    again = pipe(PROMPT, **VIDEO, num_inference_steps=6, seed=5, cache=cache)  # the same cache object, reset
    torch.testing.assert_close(again.video, first.video, rtol=0, atol=0)


def test_cfg_runs_one_batched_forward_per_step_with_one_cache(pipe):
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        out = pipe(PROMPT, **VIDEO, num_inference_steps=6, seed=1, cfg_scale=3.0,
                   cache=TaylorCache(TaylorSeerConfig(interval=5)))  # fmt: skip
    finally:
        hook.remove()
    assert calls == [2] * 6  # [uncond, cond] in one forward: the schedule advances once per step
    assert (out.num_full_steps, out.num_forecast_steps) == (2, 4)
    default_negative = pipe(PROMPT, **VIDEO, num_inference_steps=2, seed=1, cfg_scale=3.0, negative_prompt=None)
    explicit = pipe(PROMPT, **VIDEO, num_inference_steps=2, seed=1, cfg_scale=3.0, negative_prompt=NEGATIVE_PROMPT)
    torch.testing.assert_close(default_negative.video, explicit.video, rtol=0, atol=0)


def test_latents_and_guidance_follow_upstream(pipe):
    latents = pipe.prepare_latents(7, 48, 64, 9)
    assert latents.shape == (1, 16, 3, 6, 8) and latents.dtype == torch.float32
    torch.testing.assert_close(latents[0], torch.randn(16, 3, 6, 8, generator=torch.Generator().manual_seed(7)))
    assert latent_shape(480, 640, 65) == (16, 17, 60, 80)
    torch.testing.assert_close(pipe.guidance(2, 6.0), torch.tensor([6000.0, 6000.0]))
    assert pipe.guidance(1, None) is None


@pytest.mark.parametrize(
    "size, message",
    [((32, 32, 4), "4k \\+ 1"), ((32, 30, 5), "multiples of 16"), ((0, 32, 5), "positive"), ((32, 32, 0), "4k")],
)
def test_bad_sizes_name_the_fix(size, message):
    with pytest.raises(ValueError, match=message):
        check_video_size(*size)


OFFLOAD_DEVICE = torch.device("cpu:0")
"""A device that is not ``torch.device("cpu")`` (so moves to it and back home are told apart) but runs on the CPU."""


def record_moves(modules: dict[str, torch.nn.Module]) -> list[tuple[str, str]]:
    """Wrap each module's ``.to`` to log ``(name, target device)`` in the returned list, in call order."""
    moves: list[tuple[str, str]] = []
    for name, module in modules.items():

        def logged(*args, _name=name, _original=module.to, **kwargs):
            target = args[0] if args else kwargs.get("device")
            moves.append((_name, str(torch.device(target)) if isinstance(target, str | torch.device) else repr(target)))
            return _original(*args, **kwargs)

        module.to = logged
    return moves


@pytest.mark.parametrize("offload", [True, False])
def test_offload_moves_encoders_and_vae_only_while_used(checkpoints, offload):
    """With offload the LLM, CLIP and the VAE each go to the device just before they run and back to the CPU right
    after; the transformer stays on the device. Without offload nothing moves after construction. The video is the
    same either way."""
    fresh = load_components(find_model_files(checkpoints["diffusers"]), TINY_MODEL, text_len=TINY_TEXT_LEN, **FP32)
    pipe = HunyuanVideoPipeline.from_components(fresh, device=OFFLOAD_DEVICE, offload=offload)
    modules = {
        "llm": pipe.text_encoder.model,
        "clip": pipe.text_encoder_2.model,
        "vae": pipe.vae,
        "transformer": pipe.transformer,
    }
    moves = record_moves(modules)
    out = pipe(PROMPT, **VIDEO, num_inference_steps=2, seed=2)
    expected_moves = [(name, device) for name in ("llm", "clip", "vae") for device in ("cpu:0", "cpu")]
    assert moves == (expected_moves if offload else [])
    for module in modules.values():
        assert next(module.parameters()).device.type == "cpu"
    plain = HunyuanVideoPipeline.from_components(fresh, device=OFFLOAD_DEVICE)(
        PROMPT, **VIDEO, num_inference_steps=2, seed=2
    )
    torch.testing.assert_close(out.video, plain.video, rtol=0, atol=0)
    # Tensors moved to cpu:0 are copies, which may round differently from the same run on "cpu" in the last bits.
    on_cpu = HunyuanVideoPipeline.from_components(fresh)(PROMPT, **VIDEO, num_inference_steps=2, seed=2)
    torch.testing.assert_close(out.video, on_cpu.video)


@torch.no_grad()
def test_vae_tiling_is_diffusers_tiled_decode_and_can_be_switched_off_again():
    """At the 32 px of the other tests diffusers' tile minimum (256 px) makes tiling a no-op; with the tiles shrunk
    to 32 px (stride 24) a 64x64 decode runs in three overlapping tiles per side. decode_latents toggles the state
    of a VAE shared across calls, so a tiled call followed by an untiled one must leave no tiling behind."""
    vae = tiny_vae()
    vae.tile_sample_min_height = vae.tile_sample_min_width = 32
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = 24
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    scaled = latents / vae.config.scaling_factor
    assert not vae.use_tiling
    plain = vae.decode(scaled, return_dict=False)[0].float().clamp(-1, 1)
    diffusers_tiled = vae.tiled_decode(scaled, return_dict=False)[0].float().clamp(-1, 1)
    assert plain.shape == (1, 3, 5, 64, 64)
    assert relative_error(diffusers_tiled, plain) > 1e-3  # the tiles' seams: tiling really happens at this size

    tiled = decode_latents(vae, latents, tiling=True)
    torch.testing.assert_close(tiled, diffusers_tiled, rtol=0, atol=0)
    untiled = decode_latents(vae, latents, tiling=False)
    torch.testing.assert_close(untiled, plain, rtol=0, atol=0)
    torch.testing.assert_close(decode_latents(vae, latents, tiling=True), diffusers_tiled, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_offload_moves_encoders_and_vae_to_the_gpu_only_while_used(checkpoints):
    components = load_components(find_model_files(checkpoints["diffusers"]), TINY_MODEL, text_len=TINY_TEXT_LEN, **FP32)
    pipe = HunyuanVideoPipeline.from_components(components, device="cuda", offload=True)
    seen = {}
    modules = {"llm": pipe.text_encoder.model, "clip": pipe.text_encoder_2.model, "vae": pipe.vae}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, next(mod.parameters()).device))
        for name, m in modules.items()
    ]
    hooks.append(pipe.vae.decoder.register_forward_pre_hook(lambda mod, args: seen.setdefault("vae", args[0].device)))
    out = pipe(PROMPT, **VIDEO, num_inference_steps=2, seed=2)
    for hook in hooks:
        hook.remove()
    assert {name: device.type for name, device in seen.items()} == {"llm": "cuda", "clip": "cuda", "vae": "cuda"}
    assert all(next(m.parameters()).device.type == "cpu" for m in modules.values())
    assert next(pipe.transformer.parameters()).device.type == "cuda" and out.video.device.type == "cpu"


# ------------------------------------------------------------------------------------------------ weights


def test_both_layouts_give_the_same_video(checkpoints, pipe):
    official_files = find_model_files(checkpoints["official"])
    assert official_files.layout == "official" and find_model_files(checkpoints["diffusers"]).layout == "diffusers"
    official = HunyuanVideoPipeline.from_components(
        load_components(official_files, TINY_MODEL, text_len=TINY_TEXT_LEN, **FP32)
    )
    a = official(PROMPT, **VIDEO, num_inference_steps=3, seed=4)
    b = pipe(PROMPT, **VIDEO, num_inference_steps=3, seed=4)
    # Same weights; safetensors and torch.load buffers differ in alignment, which changes the last float bits.
    torch.testing.assert_close(a.video, b.video, rtol=0, atol=1e-5)


def test_dit_weight_overrides_the_transformer(checkpoints):
    dit = checkpoints["official"] / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
    files = find_model_files(checkpoints["diffusers"], dit_weight=dit)
    assert files.transformer.path == dit
    check_model_files(files)


def test_missing_weights_list_every_component_with_path_and_repo(tmp_path):
    with pytest.raises(CheckpointError) as error:
        check_model_files(find_model_files(tmp_path / "ckpts"))
    message = str(error.value)
    for expected in (
        "transformer: " + str(tmp_path / "ckpts/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt"),
        "vae: " + str(tmp_path / "ckpts/hunyuan-video-t2v-720p/vae") + "/ (with config.json, pytorch_model.pt)",
        "text_encoder + tokenizer: " + str(tmp_path / "ckpts/text_encoder"),
        "text_encoder_2 + tokenizer_2: " + str(tmp_path / "ckpts/text_encoder_2"),
        "tencent/HunyuanVideo",
        "xtuner/llava-llama-3-8b-v1_1-transformers",
        "openai/clip-vit-large-patch14",
        "hunyuanvideo-community/HunyuanVideo",
    ):
        assert expected in message

    partial = tmp_path / "community"
    (partial / "transformer").mkdir(parents=True)
    (partial / "transformer" / "config.json").write_text("{}")
    (partial / "vae").mkdir()
    with pytest.raises(CheckpointError) as error:
        check_model_files(find_model_files(partial))
    listed = re.findall(r"^  (\w+): ", str(error.value), flags=re.M)
    assert listed == ["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    assert "from hunyuanvideo-community/HunyuanVideo" in str(error.value)


def test_official_vae_config_and_keys_map_onto_diffusers(checkpoints):
    folder = checkpoints["official"] / "hunyuan-video-t2v-720p" / "vae"
    kwargs = official_vae_config(json.loads((folder / "config.json").read_text()))
    reference = dict(tiny_vae().config)
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()} == {
        k: (list(reference[k]) if isinstance(reference[k], tuple) else reference[k]) for k in kwargs
    }
    assert kwargs["temporal_compression_ratio"] == 4 and kwargs["spatial_compression_ratio"] == 8
    prefixed = {"state_dict": {"vae.decoder.conv_in.conv.weight": torch.zeros(1), "loss.logvar": torch.zeros(1)}}
    assert list(official_vae_state_dict(prefixed)) == ["decoder.conv_in.conv.weight"]
    with pytest.raises(ValueError, match="DownEncoderBlockCausal3D"):
        official_vae_config({"down_block_types": ["DownEncoderBlock2D"]})


def test_an_unmappable_official_vae_says_to_use_the_diffusers_layout(checkpoints, tmp_path):
    source = checkpoints["official"] / "hunyuan-video-t2v-720p" / "vae"
    broken = tmp_path / "vae"
    broken.mkdir()
    (broken / "config.json").write_text((source / "config.json").read_text())
    weights = torch.load(source / "pytorch_model.pt", weights_only=True)["state_dict"]
    del weights["vae.decoder.conv_out.conv.weight"]
    torch.save({"state_dict": weights}, broken / "pytorch_model.pt")
    with pytest.raises(CheckpointError, match="(?s)decoder.conv_out.conv.weight.*diffusers-layout vae/"):
        load_vae(broken)

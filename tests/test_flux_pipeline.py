"""FLUX text-to-image pipeline on tiny random components: parity with diffusers' FluxPipeline, TaylorSeer, seeds,
batching, offload, weight resolution and loading (diffusers folders, BFL single files, environment variables)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from flux_testing import TINY_AE_CONFIG, TINY_DEV, save_tiny_flux_checkpoint, tiny_autoencoder
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

from common.checkpoint import CheckpointError
from common.delta_dit import DeltaDiTConfig
from common.taylor_cache import TaylorSeerConfig
from common.teacache import TeaCacheConfig
from common.toca import ToCaConfig
from taylorseer_flux.autoencoder import (
    FLUX_AE_CONFIG,
    ae_config_from_bfl,
    bfl_ae_to_diffusers,
    diffusers_ae_to_bfl,
    load_autoencoder,
)
from taylorseer_flux.pipeline import FluxTextToImage, method_cache
from taylorseer_flux.sampling import get_noise, pack
from taylorseer_flux.weights import (
    find_flux_weights,
    load_flux_components,
    load_transformer,
    transformer_params,
)

PROMPTS = ["a red fox sitting in the snow", "a small robot reading a book"]
SEEDS = [7, 8]
# Not square, so that a swapped width and height cannot pass.
SIZE = {"width": 48, "height": 32}
TEXT_LEN = 32
TAYLORSEER = TaylorSeerConfig(interval=6, max_order=2, first_enhance=3, derivative_start_step=2)
NO_ENV = {}
# Not the default 3.5 of either pipeline, so that a guidance argument that went unused cannot pass.
GUIDANCE = 4.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_flux_checkpoint(tmp_path_factory.mktemp("flux-dev"))


@pytest.fixture(scope="module")
def pipe(checkpoint) -> FluxTextToImage:
    """Through the public entry point, with no component taken from the caller's environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("FLUX_DEV", "AE", "FLUX_T5", "FLUX_CLIP"):
            patch.delenv(name, raising=False)
        return FluxTextToImage.from_pretrained("flux-dev", checkpoint, max_sequence_length=TEXT_LEN)


def from_folder(folder: Path, model_name: str = "flux-dev", environ: dict | None = None, **kwargs) -> FluxTextToImage:
    """Like FluxTextToImage.from_pretrained, with the environment given explicitly and, for a BFL single file, the
    tiny architecture (``params=``) instead of the full-size preset of the model name."""
    weights = find_flux_weights(model_name, folder, environ=NO_ENV if environ is None else environ)
    params = kwargs.pop("params", None) or transformer_params(weights.transformer, model_name)
    components = load_flux_components(weights, params, max_sequence_length=kwargs.pop("text_len", TEXT_LEN))
    return FluxTextToImage(components, shift=model_name == "flux-dev", **kwargs)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def diffusers_pipeline(folder: Path, scheduler: FlowMatchEulerDiscreteScheduler) -> FluxPipeline:
    """diffusers' own FluxPipeline built from the same folder with its own loaders."""
    return FluxPipeline(
        scheduler=scheduler,
        vae=AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        text_encoder_2=T5EncoderModel.from_pretrained(folder / "text_encoder_2", local_files_only=True),
        tokenizer_2=AutoTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True),
        transformer=FluxTransformer2DModel.from_pretrained(folder / "transformer", local_files_only=True),
    )


def assert_matches_diffusers(ours: FluxTextToImage, theirs: FluxPipeline, text_len: int, num_steps: int) -> None:
    result = ours(PROMPTS, SEEDS, **SIZE, num_steps=num_steps, guidance=GUIDANCE)
    latents = pack(ours.initial_noise(SEEDS, **SIZE))
    images = theirs(
        prompt=PROMPTS,
        latents=latents,
        **SIZE,
        num_inference_steps=num_steps,
        guidance_scale=GUIDANCE,
        max_sequence_length=text_len,
        output_type="pt",
    ).images  # (B, 3, H, W) in [0, 1]
    expected = images * 2 - 1
    assert result.images.shape == expected.shape == (2, 3, SIZE["height"], SIZE["width"])
    assert 0.1 < result.images.std() and (result.images.abs() > 0.999).float().mean() < 0.1  # not saturated
    # Both sides run fp32 from the same weights; what differs is only float rounding: diffusers feeds the transformer
    # fl(fl(1000 * sigma) / 1000) and steps with float32 sigmas, we use the float64 schedule.
    assert relative_error(result.images, expected) < 1e-5


def test_dev_matches_diffusers_flux_pipeline(checkpoint, pipe) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    assert_matches_diffusers(pipe, diffusers_pipeline(checkpoint, scheduler), TEXT_LEN, num_steps=3)


def test_schnell_matches_diffusers_flux_pipeline(tmp_path) -> None:
    """No guidance embedder, no schedule shift (FLUX.1-schnell's scheduler config), 256 T5 tokens."""
    folder = save_tiny_flux_checkpoint(tmp_path, guidance_embed=False)
    ours = from_folder(folder, "flux-schnell", text_len=256)
    assert not ours.shift and not ours.components.transformer.params.guidance_embed
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    assert_matches_diffusers(ours, diffusers_pipeline(folder, scheduler), 256, num_steps=2)


def test_interval_one_cache_is_the_plain_model(pipe) -> None:
    plain = pipe(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=3, config=None)
    cached = pipe(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=3, config=TaylorSeerConfig(interval=1, max_order=2))
    assert torch.equal(cached.latents, plain.latents) and torch.equal(cached.images, plain.images)
    assert (cached.num_full_steps, cached.num_forecast_steps) == (3, 0)


def test_taylorseer_forecasts_differ_from_full_compute_but_stay_close(pipe) -> None:
    full = pipe(PROMPTS, SEEDS, **SIZE, num_steps=5, config=None)
    fast = pipe(PROMPTS, SEEDS, **SIZE, num_steps=5, config=TAYLORSEER)
    assert (fast.num_full_steps, fast.num_forecast_steps) == (3, 2)  # steps 0, 1, 2 full; 3 and 4 forecast
    error = relative_error(fast.latents, full.latents)
    assert 1e-4 < error < 0.2


@pytest.mark.parametrize(
    ("method", "config", "steps"),
    [
        (None, ToCaConfig(interval=3), (2, 3)),
        ("duca", ToCaConfig(interval=3), (2, 3)),
        (None, DeltaDiTConfig(interval=3, cached_blocks=1), (2, 3)),
        ("fora", TaylorSeerConfig(interval=3, max_order=0), (2, 3)),
        (None, TeaCacheConfig(threshold=0), (5, 0)),
    ],
    ids=["toca", "duca", "delta-dit", "fora", "teacache-0"],
)
def test_every_method_runs_through_the_pipeline(method, config, steps, pipe) -> None:
    """5 steps, full steps 0 and 3 for the scheduled methods; each stays close to full compute."""
    full = pipe(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=5)
    result = pipe(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=5, method=method, config=config)
    assert (result.num_full_steps, result.num_forecast_steps) == steps
    error = relative_error(result.latents, full.latents)
    assert (error == 0) if steps[1] == 0 else (0 < error < 0.2)


def test_a_method_is_never_run_under_another_name() -> None:
    assert type(method_cache(None, ToCaConfig())).__name__ == "ToCaCache"
    assert type(method_cache("duca", ToCaConfig())).__name__ == "DuCaCache"
    assert method_cache("full", ToCaConfig()) is None and method_cache(None, TaylorSeerConfig(interval=1)) is None
    with pytest.raises(ValueError, match="method 'duca' does not take a TaylorSeerConfig"):
        method_cache("duca", TaylorSeerConfig(interval=3))
    with pytest.raises(ValueError, match="FORA is TaylorSeer at max_order 0, got max_order 2"):
        method_cache("fora", TaylorSeerConfig(interval=3, max_order=2))
    with pytest.raises(TypeError, match="got dict"):
        method_cache(None, {"interval": 3})


def test_each_image_gets_its_own_noise_whatever_the_batch(pipe) -> None:
    noise = pipe.initial_noise(SEEDS, **SIZE)
    for k, seed in enumerate(SEEDS):
        assert torch.equal(noise[k : k + 1], get_noise(1, SIZE["height"], SIZE["width"], torch.float32, seed=seed))
    batched = pipe(PROMPTS, SEEDS, **SIZE, num_steps=4, config=TAYLORSEER)
    for k in range(len(PROMPTS)):
        alone = pipe(PROMPTS[k : k + 1], SEEDS[k : k + 1], **SIZE, num_steps=4, config=TAYLORSEER)
        torch.testing.assert_close(batched.images[k : k + 1], alone.images, rtol=1e-5, atol=1e-5)


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


OFFLOAD_DEVICE = torch.device("cpu:0")
"""A device that is not ``torch.device("cpu")`` (so moves to it and back home are told apart) but runs on the CPU."""


@pytest.fixture(scope="module")
def images_on_offload_device(checkpoint) -> torch.Tensor:
    """The reference for the offload runs: no offload, the same device. (Runs on ``cpu:0`` may differ from runs on
    ``cpu`` in the last float bits, as tensors moved to ``cpu:0`` are copies laid out differently.)"""
    return from_folder(checkpoint, device=OFFLOAD_DEVICE)(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=2).images


@pytest.mark.parametrize("offload", [True, False])
def test_offload_moves_one_component_at_a_time(checkpoint, pipe, images_on_offload_device, offload) -> None:
    """Each component goes to the device just before it runs and back to the CPU right after, so the device never
    holds two of them; without offload nothing moves after construction. Either way the images are the same."""
    offloaded = from_folder(checkpoint, offload=offload, device=OFFLOAD_DEVICE)
    components = offloaded.components
    names = ("t5", "clip", "transformer", "autoencoder")
    moves = record_moves({name: getattr(components, name) for name in names})
    result = offloaded(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=2)
    expected_moves = [(name, device) for name in names for device in ("cpu:0", "cpu")] if offload else []
    assert moves == expected_moves
    assert torch.equal(result.images, images_on_offload_device)
    torch.testing.assert_close(result.images, pipe(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=2).images)


def test_bfl_single_files_load_like_the_diffusers_folders(checkpoint, pipe, monkeypatch) -> None:
    from_folder_sd = load_transformer(checkpoint / "transformer", TINY_DEV).state_dict()
    from_file_sd = load_transformer(checkpoint / "flux1-dev.safetensors", TINY_DEV).state_dict()
    assert from_file_sd.keys() == from_folder_sd.keys()
    assert all(torch.equal(from_file_sd[k], from_folder_sd[k]) for k in from_folder_sd)
    vae_folder, vae_file = load_autoencoder(checkpoint / "vae"), load_autoencoder(checkpoint / "ae.safetensors")
    assert vae_file.config.block_out_channels == vae_folder.config.block_out_channels
    assert (vae_file.config.scaling_factor, vae_file.config.shift_factor) == (0.3611, 0.1159)
    assert vae_file.state_dict().keys() == vae_folder.state_dict().keys()
    assert all(torch.equal(v, vae_folder.state_dict()[k]) for k, v in vae_file.state_dict().items())

    # The same through the environment variables, BFL-style: FLUX_DEV and AE name the single files.
    environ = {"FLUX_DEV": str(checkpoint / "flux1-dev.safetensors"), "AE": str(checkpoint / "ae.safetensors")}
    weights = find_flux_weights("flux-dev", checkpoint, environ=environ)
    assert weights.transformer.name == "flux1-dev.safetensors" and weights.autoencoder.name == "ae.safetensors"
    assert transformer_params(weights.transformer, "flux-dev").hidden_size == 3072  # a BFL file is the preset
    single = from_folder(checkpoint, environ=environ, params=TINY_DEV)
    expected = pipe(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=2)
    # Equal weights, but held in differently allocated memory: CPU GEMM kernels may round differently.
    torch.testing.assert_close(single(PROMPTS[:1], SEEDS[:1], **SIZE, num_steps=2).images, expected.images)


def test_autoencoder_key_mapping_is_explicit_and_complete() -> None:
    vae = tiny_autoencoder()
    theirs = vae.state_dict()
    bfl = diffusers_ae_to_bfl(theirs)
    assert "decoder.up.1.block.0.nin_shortcut.weight" in bfl  # decoder levels are numbered from the output end
    assert bfl["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)  # 1x1 convolutions in BFL's layout
    back = bfl_ae_to_diffusers(bfl)
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], v) for k, v in theirs.items())
    # diffusers' own (substring-replacing) converter agrees with the explicit mapping.
    reference = convert_ldm_vae_checkpoint(bfl, TINY_AE_CONFIG)
    assert reference.keys() == back.keys() and all(torch.equal(reference[k], back[k]) for k in back)
    assert ae_config_from_bfl(bfl) == TINY_AE_CONFIG

    # Full size, on the meta device: the published layout maps to FLUX's AE config, 244 tensors.
    with torch.device("meta"):
        full = AutoencoderKL(**FLUX_AE_CONFIG)
    full_bfl = diffusers_ae_to_bfl(full.state_dict())
    assert len(full_bfl) == 244 and ae_config_from_bfl(full_bfl) == FLUX_AE_CONFIG

    broken = dict(bfl)
    del broken["decoder.up.0.block.1.conv2.bias"]
    broken["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)decoder\.up\.0\.block\.1\.conv2\.bias.*decoder\.extra\.weight"):
        bfl_ae_to_diffusers(broken)


def test_text_encoders_follow_bfl_semantics(pipe, checkpoint) -> None:
    """T5: the padded, truncated max_length sequence, no attention mask; CLIP: pooler_output over 77 tokens."""
    long_prompt = " ".join(["a cat"] * 60)  # 120 words: truncated, not an error
    t5, clip = pipe.components.t5, pipe.components.clip
    sequence, pooled = t5([PROMPTS[0], long_prompt]), clip([PROMPTS[0], long_prompt])
    assert sequence.shape == (2, TEXT_LEN, TINY_DEV.context_in_dim) and pooled.shape == (2, TINY_DEV.vec_in_dim)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "tokenizer_2", local_files_only=True)
    ids = tokenizer([PROMPTS[0]], padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="pt")
    assert int((ids.input_ids == tokenizer.pad_token_id).sum()) > 0  # padding is encoded too
    with torch.no_grad():
        expected = t5.encoder(input_ids=ids.input_ids).last_hidden_state
    torch.testing.assert_close(sequence[:1], expected, rtol=0, atol=0)
    assert clip.max_length == 77


def test_text_encoders_from_environment_variables(checkpoint, tmp_path) -> None:
    """FLUX_T5 names a folder with the subfolder pair of a FLUX checkpoint; FLUX_CLIP one folder holding both the
    model and its tokenizer (the layout of openai/clip-vit-large-patch14). Empty variables count as unset."""
    clip_folder = tmp_path / "clip-vit-large-patch14"
    shutil.copytree(checkpoint / "text_encoder", clip_folder)
    shutil.copytree(checkpoint / "tokenizer", clip_folder, dirs_exist_ok=True)
    only_transformer = tmp_path / "ckpt"
    shutil.copytree(checkpoint / "transformer", only_transformer / "transformer")
    environ = {"FLUX_T5": str(checkpoint), "FLUX_CLIP": str(clip_folder), "AE": str(checkpoint / "vae"), "FLUX_DEV": ""}
    weights = find_flux_weights("flux-dev", only_transformer, environ=environ)
    assert weights.t5.model == checkpoint / "text_encoder_2" and weights.t5.tokenizer == checkpoint / "tokenizer_2"
    assert weights.clip.model == weights.clip.tokenizer == clip_folder
    assert weights.transformer == only_transformer / "transformer" and weights.autoencoder == checkpoint / "vae"
    components = load_flux_components(weights, TINY_DEV, max_sequence_length=TEXT_LEN)
    assert components.clip.encoder.config.hidden_size == TINY_DEV.vec_in_dim


def test_missing_components_are_listed_in_one_message(checkpoint, tmp_path) -> None:
    with pytest.raises(CheckpointError) as error:
        find_flux_weights("flux-dev", tmp_path / "nowhere", environ=NO_ENV)
    message = str(error.value)
    for expected in ("transformer", "autoencoder", "CLIP-L", "T5-XXL", "FLUX_DEV", "AE", "FLUX_CLIP", "FLUX_T5",
                     "transformer/", "flux1-dev.safetensors", "vae/", "ae.safetensors", "text_encoder/", "tokenizer/",
                     "text_encoder_2/", "tokenizer_2/", "black-forest-labs/FLUX.1-dev",
                     "black-forest-labs/FLUX.1-schnell", "does not exist", "nothing is downloaded"):  # fmt: skip
        assert expected in message, expected
    assert str((tmp_path / "nowhere" / "vae").absolute()) in message

    partial = tmp_path / "partial"
    shutil.copytree(checkpoint, partial, ignore=shutil.ignore_patterns("vae", "ae.safetensors"))
    with pytest.raises(CheckpointError) as error:
        find_flux_weights("flux-schnell", partial, environ={"FLUX_SCHNELL": str(tmp_path / "missing.safetensors")})
    text = str(error.value)
    assert "FLUX_SCHNELL=" in text and "missing.safetensors" in text and "autoencoder" in text
    assert "CLIP-L" not in text and "T5-XXL" not in text


def test_model_name_must_match_the_checkpoint(checkpoint) -> None:
    assert transformer_params(checkpoint / "transformer", "flux-dev") == TINY_DEV
    with pytest.raises(CheckpointError, match="guidance_embeds=true"):
        transformer_params(checkpoint / "transformer", "flux-schnell")

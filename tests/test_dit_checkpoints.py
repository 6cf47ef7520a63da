"""Loading DiT weights from every accepted format, and the readable errors when they are missing or do not fit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from diffusers import DiTTransformer2DModel
from dit_testing import randomised, tiny_vae
from safetensors.torch import save_file

from common.checkpoint import CheckpointError, load_state_dict_checked, read_state_dict
from taylorseer_dit.checkpoints import find_dit_checkpoint, load_dit, load_vae, read_dit_checkpoint
from taylorseer_dit.diffusers_format import diffusers_config, dit_to_diffusers
from taylorseer_dit.models import DiT, DiT_models

IMAGE_SIZE = 8
NUM_CLASSES = 10
# The tiny models run in pixel space (latent_scale=1): input size = image size = 8.
LOAD_KWARGS = {"image_size": IMAGE_SIZE, "latent_scale": 1, "num_classes": NUM_CLASSES}
PUBLISHED_256 = "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"
PUBLISHED_512 = "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt"


def tiny_dit(name: str = "DiT-Tiny/2", seed: int = 0) -> DiT:
    return randomised(DiT_models[name](input_size=IMAGE_SIZE, num_classes=NUM_CLASSES), seed)


@torch.no_grad()
def output(model: DiT) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return model(x, torch.tensor([3, 700]), torch.tensor([2, NUM_CLASSES]))


def diffusers_twin(model: DiT) -> DiTTransformer2DModel:
    twin = DiTTransformer2DModel(**diffusers_config(model))
    twin.load_state_dict(dit_to_diffusers(model.state_dict()), strict=True)
    return twin


def train_checkpoint(ema: DiT) -> dict:
    """Shaped like DiT's train.py checkpoint; ``model`` holds different (non-EMA) weights so the choice is visible."""
    raw = tiny_dit(seed=7)
    optimizer = torch.optim.AdamW(raw.parameters(), lr=1e-4)
    x = torch.randn(1, 4, IMAGE_SIZE, IMAGE_SIZE)
    raw(x, torch.tensor([1]), torch.tensor([0])).square().mean().backward()
    optimizer.step()
    args = argparse.Namespace(model="DiT-Tiny/2", image_size=IMAGE_SIZE, global_batch_size=256, vae="ema")
    return {"model": raw.state_dict(), "ema": ema.state_dict(), "opt": optimizer.state_dict(), "args": args}


def save_plain_pt(model: DiT, tmp: Path) -> Path:
    torch.save(model.state_dict(), tmp / "plain.pt")
    return tmp / "plain.pt"


def save_train_pt(model: DiT, tmp: Path) -> Path:
    torch.save(train_checkpoint(model), tmp / "0400000.pt")
    return tmp / "0400000.pt"


def save_safetensors(model: DiT, tmp: Path) -> Path:
    save_file(model.state_dict(), tmp / "model.safetensors")
    return tmp / "model.safetensors"


def save_diffusers_model(model: DiT, tmp: Path) -> Path:
    diffusers_twin(model).save_pretrained(tmp / "dit-diffusers")
    return tmp / "dit-diffusers"


def save_diffusers_pipeline(model: DiT, tmp: Path) -> Path:
    """The layout of huggingface facebook/DiT-XL-2-256: model_index.json plus transformer/ (vae/, scheduler/)."""
    pipeline = tmp / "DiT-pipeline"
    diffusers_twin(model).save_pretrained(pipeline / "transformer")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    return pipeline


def save_diffusers_sharded(model: DiT, tmp: Path) -> Path:
    diffusers_twin(model).save_pretrained(tmp / "dit-sharded", max_shard_size="100KB")
    assert (tmp / "dit-sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    return tmp / "dit-sharded"


def save_diffusers_bin(model: DiT, tmp: Path) -> Path:
    diffusers_twin(model).save_pretrained(tmp / "dit-bin", safe_serialization=False)
    assert (tmp / "dit-bin" / "diffusion_pytorch_model.bin").is_file()
    return tmp / "dit-bin"


SAVERS = [
    save_plain_pt,
    save_train_pt,
    save_safetensors,
    save_diffusers_model,
    save_diffusers_pipeline,
    save_diffusers_sharded,
    save_diffusers_bin,
]


@pytest.mark.parametrize("save", SAVERS, ids=lambda f: f.__name__.removeprefix("save_"))
def test_every_format_loads_bit_identical(save, tmp_path):
    source = tiny_dit()
    loaded = load_dit("DiT-Tiny/2", save(source, tmp_path), **LOAD_KWARGS)
    assert not loaded.training
    assert torch.equal(output(loaded), output(source))
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_meta_construction_leaves_nothing_on_meta(tmp_path):
    loaded = load_dit("DiT-Tiny/2", save_plain_pt(tiny_dit(), tmp_path), **LOAD_KWARGS, dtype=torch.float64)
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert all(t.device == torch.device("cpu") and t.dtype == torch.float64 for t in tensors)
    assert not loaded.pos_embed.requires_grad  # frozen table stays frozen after assign=True
    assert loaded.blocks[0].attn.qkv.weight.requires_grad


def test_train_checkpoint_uses_ema_weights(tmp_path):
    ema = tiny_dit()
    state_dict = read_dit_checkpoint(save_train_pt(ema, tmp_path))
    assert all(torch.equal(state_dict[k], v) for k, v in ema.state_dict().items())


def test_wrong_patch_size_lists_the_mismatched_shapes(tmp_path):
    path = save_plain_pt(tiny_dit("DiT-Tiny/4"), tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_dit("DiT-Tiny/2", path, **LOAD_KWARGS)
    message = str(error.value)
    assert "DiT-Tiny/2" in message and str(path.absolute()) in message
    assert "shape mismatches (4):" in message
    for key in ("pos_embed", "x_embedder.proj.weight", "final_layer.linear.weight", "final_layer.linear.bias"):
        assert f"\n    {key}: checkpoint" in message
    assert "--image-size" in message


def test_wrong_image_size_is_reported(tmp_path):
    path = save_plain_pt(tiny_dit(), tmp_path)
    with pytest.raises(CheckpointError, match=r"pos_embed: checkpoint \(1, 16, 64\) vs model \(1, 64, 64\)"):
        load_dit("DiT-Tiny/2", path, image_size=16, latent_scale=1, num_classes=NUM_CLASSES)


def test_extra_and_missing_keys_are_listed_in_one_error(tmp_path):
    state_dict = tiny_dit().state_dict()
    del state_dict["blocks.1.mlp.fc2.bias"]
    state_dict["blocks.1.mlp.fc3.bias"] = torch.zeros(64)
    torch.save(state_dict, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError) as error:
        load_dit("DiT-Tiny/2", tmp_path / "edited.pt", **LOAD_KWARGS)
    message = str(error.value)
    assert "missing from the checkpoint (1):\n    blocks.1.mlp.fc2.bias\n" in message
    assert "unexpected in the checkpoint (1):\n    blocks.1.mlp.fc3.bias\n" in message


def test_long_key_lists_are_truncated_and_prefixes_explained():
    model = tiny_dit()
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_state_dict_checked(model, wrapped, source="ddp.pt")
    message = str(error.value)
    total = len(wrapped)
    assert f"missing from the checkpoint ({total})" in message and f"\n    ... and {total - 20} more" in message
    assert "starts with 'module.'" in message


class _WithBuffer(nn.Module):
    """A layer with a non-persistent buffer computed at init, the case meta construction must handle."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.register_buffer("freqs", torch.arange(4.0), persistent=False)


def test_non_persistent_buffers_must_be_rebuilt():
    source = _WithBuffer()
    with torch.device("meta"):
        meta = _WithBuffer()
    with pytest.raises(CheckpointError, match="freqs"):
        load_state_dict_checked(meta, source.state_dict(), source="toy.pt")

    def rebuild(module: nn.Module) -> None:
        module.register_buffer("freqs", torch.arange(4.0), persistent=False)

    with torch.device("meta"):
        meta = _WithBuffer()
    load_state_dict_checked(meta, source.state_dict(), source="toy.pt", rebuild_buffers=rebuild)
    assert torch.equal(meta.freqs, source.freqs) and torch.equal(meta.linear.weight, source.linear.weight)


def test_explicit_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError) as error:
        load_dit("DiT-Tiny/2", tmp_path / "nope.pt", **LOAD_KWARGS)
    assert str(tmp_path / "nope.pt") in str(error.value) and "--ckpt" in str(error.value)


@pytest.mark.parametrize(("size", "url"), [(256, PUBLISHED_256), (512, PUBLISHED_512)])
def test_missing_default_checkpoint_says_what_to_download(size, url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAYLORSEER_DIT_CKPT_DIR", raising=False)
    with pytest.raises(CheckpointError) as error:
        find_dit_checkpoint("DiT-XL/2", size, None)
    message = str(error.value)
    assert url in message
    assert str(tmp_path / "pretrained_models") in message and "--ckpt" in message


def test_default_checkpoint_directory_and_env_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAYLORSEER_DIT_CKPT_DIR", raising=False)
    (tmp_path / "pretrained_models").mkdir()
    (tmp_path / "pretrained_models" / "DiT-XL-2-256x256.pt").touch()
    assert find_dit_checkpoint("DiT-XL/2", 256, None) == Path("pretrained_models/DiT-XL-2-256x256.pt")

    monkeypatch.setenv("TAYLORSEER_DIT_CKPT_DIR", str(tmp_path / "weights"))
    with pytest.raises(CheckpointError, match="TAYLORSEER_DIT_CKPT_DIR") as error:
        find_dit_checkpoint("DiT-XL/2", 256, None)
    assert str(tmp_path / "weights") in str(error.value)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "DiT-XL-2-512x512.pt").touch()
    assert find_dit_checkpoint("DiT-XL/2", 512, None) == tmp_path / "weights" / "DiT-XL-2-512x512.pt"


@pytest.mark.parametrize(("model_name", "size"), [("DiT-B/2", 256), ("DiT-XL/2", 1024), ("DiT-Tiny/2", 8)])
def test_models_without_published_weights_require_ckpt(model_name, size):
    with pytest.raises(CheckpointError, match="--ckpt is required"):
        find_dit_checkpoint(model_name, size, None)


def test_unknown_model_lists_choices(tmp_path):
    with pytest.raises(CheckpointError) as error:
        load_dit("DiT-XXL/2", tmp_path / "x.pt", image_size=256)
    assert "DiT-XXL/2" in str(error.value)
    assert all(name in str(error.value) for name in DiT_models)


@pytest.mark.parametrize("name", ["broken.pt", "broken.safetensors"])
def test_corrupt_file_names_the_file(name, tmp_path):
    torch.save(tiny_dit().state_dict(), tmp_path / "good.pt")
    (tmp_path / name).write_bytes((tmp_path / "good.pt").read_bytes()[:500])  # an interrupted download
    with pytest.raises(CheckpointError) as error:
        read_state_dict(tmp_path / name)
    assert name in str(error.value) and "Could not read checkpoint file" in str(error.value)


def test_non_state_dict_file_is_rejected(tmp_path):
    torch.save({"step": 3, "args": argparse.Namespace(lr=1.0)}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="not a state dict|does not hold a state dict"):
        load_dit("DiT-Tiny/2", tmp_path / "meta.pt", **LOAD_KWARGS)


def test_missing_vae_names_the_huggingface_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAYLORSEER_VAE_DIR", raising=False)
    with pytest.raises(CheckpointError) as error:
        load_vae("mse", None, "cpu")
    message = str(error.value)
    assert "stabilityai/sd-vae-ft-mse" in message and "diffusion_pytorch_model.safetensors" in message
    assert str(tmp_path / "pretrained_models" / "sd-vae-ft-mse") in message
    with pytest.raises(CheckpointError, match="choices: ema, mse"):
        load_vae("kl-f8", None, "cpu")


def test_vae_loads_from_env_dir_default_dir_and_path(tmp_path, monkeypatch):
    vae = tiny_vae()
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = vae.decode(latents).sample
    vae.save_pretrained(tmp_path / "vaes" / "sd-vae-ft-ema")
    vae.save_pretrained(tmp_path / "pretrained_models" / "sd-vae-ft-mse")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAYLORSEER_VAE_DIR", str(tmp_path / "vaes"))
    from_env = load_vae("ema", None, "cpu")
    monkeypatch.delenv("TAYLORSEER_VAE_DIR")
    from_default = load_vae("mse", None, "cpu")
    from_path = load_vae("ema", tmp_path / "vaes" / "sd-vae-ft-ema", "cpu")
    for loaded in (from_env, from_default, from_path):
        assert not loaded.training
        with torch.no_grad():
            decoded = loaded.decode(latents).sample
        assert decoded.shape == (1, 3, 4, 4)
        assert torch.equal(decoded, expected)

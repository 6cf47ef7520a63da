"""The one diffusers-folder reader of ``common.checkpoint`` and its use by the three model trees.

Every problem with a folder (missing or corrupt config.json, corrupt index, missing shard, a key the index lists but
no shard holds) must be one CheckpointError naming the file, never a JSONDecodeError or KeyError traceback.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel
from dit_testing import tiny_dit
from flux_testing import TINY_AE_CONFIG, TINY_DEV, save_tiny_transformer, tiny_autoencoder, tiny_flux
from hunyuanvideo_testing import tiny_transformer, to_diffusers_transformer
from safetensors.torch import save_file

from common import key_mapping
from common.checkpoint import (
    CheckpointError,
    find_diffusers_model_folder,
    read_diffusers_folder,
    read_diffusers_weights,
)
from taylorseer_dit import diffusers_format as dit_format
from taylorseer_flux import weights as flux_weights
from taylorseer_flux.autoencoder import diffusers_ae_to_bfl, load_autoencoder
from taylorseer_flux.model import load_flux
from taylorseer_hunyuanvideo import model as hunyuan_model
from taylorseer_hunyuanvideo import vae as hunyuan_vae
from taylorseer_hunyuanvideo import weights as hunyuan_weights
from taylorseer_hunyuanvideo.model import load_hunyuan_video
from taylorseer_hunyuanvideo.weights import load_vae

CONFIG = {"_class_name": "Tiny", "num_layers": 1}
SINGLE = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


def tensors() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(6.0).reshape(2, 3), "b.weight": torch.ones(4), "c.bias": torch.zeros(2)}


def write_single(folder: Path, config: dict | None = CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors(), str(folder / SINGLE))
    return folder


def write_sharded(folder: Path) -> Path:
    """Two shards: a.weight in the first, b.weight and c.bias in the second, with their index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    sd = tensors()
    shards = {
        "model-00001-of-00002.safetensors": ["a.weight"],
        "model-00002-of-00002.safetensors": ["b.weight", "c.bias"],
    }
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(folder / shard))
    weight_map = {key: shard for shard, keys in shards.items() for key in keys}
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def assert_equal_dicts(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key


# ------------------------------------------------------------------------------------------ common.checkpoint


def test_single_file_folder(tmp_path: Path) -> None:
    state_dict, config = read_diffusers_folder(write_single(tmp_path / "m"))
    assert config == CONFIG
    assert_equal_dicts(state_dict, tensors())


def test_single_bin_folder(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    torch.save(tensors(), folder / "diffusion_pytorch_model.bin")
    assert_equal_dicts(read_diffusers_weights(folder), tensors())


def test_sharded_folder(tmp_path: Path) -> None:
    state_dict, config = read_diffusers_folder(write_sharded(tmp_path / "m"))
    assert config == CONFIG
    assert_equal_dicts(state_dict, tensors())


def test_model_folder_is_the_folder_or_its_subfolder(tmp_path: Path) -> None:
    model = write_single(tmp_path / "model")
    assert find_diffusers_model_folder(model, "transformer") == model
    pipeline = tmp_path / "pipeline"
    write_single(pipeline / "transformer")
    assert find_diffusers_model_folder(pipeline, "transformer") == pipeline / "transformer"
    with pytest.raises(CheckpointError, match=r"(?s)is not a diffusers model folder.*unet/ subfolder"):
        find_diffusers_model_folder(tmp_path / "pipeline" / "..", "unet")
    with pytest.raises(CheckpointError, match="not found"):
        find_diffusers_model_folder(tmp_path / "nowhere", "transformer")


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"(?s)config\.json not found.*config\.json"):
        read_diffusers_folder(write_single(tmp_path / "m", config=None))


@pytest.mark.parametrize("text", ['{"num_layers": 1', "\xff\xfe", "[1, 2]"])
def test_corrupt_config(tmp_path: Path, text: str) -> None:
    folder = write_single(tmp_path / "m")
    (folder / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=r"(?s)(Could not read|does not hold a JSON object).*config\.json"):
        read_diffusers_folder(folder)


@pytest.mark.parametrize("index", ["{not json", "[]", '{"metadata": {}}', '{"weight_map": {"a.weight": 3}}'])
def test_corrupt_index(tmp_path: Path, index: str) -> None:
    folder = write_sharded(tmp_path / "m")
    (folder / INDEX).write_text(index)
    with pytest.raises(CheckpointError, match=r"(?s)(index|weight_map).*index\.json"):
        read_diffusers_weights(folder)


def test_missing_shard(tmp_path: Path) -> None:
    folder = write_sharded(tmp_path / "m")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"(?s)Shard 'model-00002-of-00002\.safetensors' not found.*download"):
        read_diffusers_weights(folder)


def test_key_listed_but_absent(tmp_path: Path) -> None:
    folder = write_sharded(tmp_path / "m")
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"]["d.weight"] = "model-00001-of-00002.safetensors"
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"(?s)listed for model-00001-of-00002\.safetensors but absent.*d\.weight"
    ):
        read_diffusers_weights(folder)


def test_key_in_a_shard_but_not_listed_for_it(tmp_path: Path) -> None:
    folder = write_sharded(tmp_path / "m")
    index = json.loads((folder / INDEX).read_text())
    del index["weight_map"]["c.bias"]
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"(?s)not listed for it.*c\.bias"):
        read_diffusers_weights(folder)


def test_folder_without_weights(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(CheckpointError, match=r"(?s)No diffusers weights.*found: config\.json"):
        read_diffusers_weights(folder)


def test_corrupt_shard_file(tmp_path: Path) -> None:
    folder = write_sharded(tmp_path / "m")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=r"Could not read checkpoint file"):
        read_diffusers_weights(folder)


# ---------------------------------------------------------------------------------------------------------- DiT


def test_dit_uses_the_common_key_mapping_helpers() -> None:
    assert dit_format.LINEAR is key_mapping.LINEAR
    assert dit_format.infer_depth is key_mapping.infer_depth
    assert not hasattr(dit_format, "_split_qkv")


def test_dit_folder_returns_only_the_state_dict(tmp_path: Path) -> None:
    from dit_testing import tiny_dit

    model = tiny_dit()
    twin = DiTTransformer2DModel(**dit_format.diffusers_config(model))
    twin.load_state_dict(dit_format.dit_to_diffusers(model.state_dict()), strict=True)
    twin.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="100KB")
    state_dict = dit_format.load_diffusers_dit_folder(tmp_path / "pipe")
    assert isinstance(state_dict, dict)
    assert_equal_dicts(state_dict, model.state_dict())
    index = tmp_path / "pipe" / "transformer" / INDEX
    index.write_text("{")
    with pytest.raises(CheckpointError, match="Could not read Sharded weights index"):
        dit_format.load_diffusers_dit_folder(tmp_path / "pipe")


def test_dit_state_dict_without_blocks_or_with_a_bad_qkv_is_refused() -> None:
    with pytest.raises(CheckpointError, match=r"no 'transformer_blocks\.<i>\.\*' keys"):
        dit_format.diffusers_to_dit({"pos_embed.proj.weight": torch.zeros(1)}, grid_size=2)
    with pytest.raises(CheckpointError, match=r"no 'blocks\.<i>\.\*' keys"):
        dit_format.dit_to_diffusers({"x_embedder.proj.weight": torch.zeros(1)})
    sd = tiny_dit(depth=1).state_dict()
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.bias has 7 output rows"):
        dit_format.dit_to_diffusers({**sd, "blocks.0.attn.qkv.bias": torch.zeros(7)})


# --------------------------------------------------------------------------------------------------------- FLUX


def test_load_flux_reads_diffusers_folders(tmp_path: Path) -> None:
    model = save_tiny_transformer(tmp_path, TINY_DEV)
    expected = model.state_dict()
    for path in (tmp_path, tmp_path / "transformer"):
        loaded = load_flux(path, TINY_DEV).state_dict()
        assert_equal_dicts(loaded, expected)
    assert flux_weights.load_transformer is load_flux
    assert not hasattr(flux_weights, "read_diffusers_transformer")


def test_load_flux_folder_with_preset_name_takes_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from taylorseer_flux.model import FLUX_PRESETS

    monkeypatch.setitem(FLUX_PRESETS, "tiny-dev", TINY_DEV)
    monkeypatch.setitem(FLUX_PRESETS, "tiny-schnell", replace(TINY_DEV, guidance_embed=False))
    save_tiny_transformer(tmp_path, TINY_DEV)
    assert load_flux(tmp_path, "tiny-dev").params == TINY_DEV
    with pytest.raises(CheckpointError, match="guidance_embeds=True"):
        load_flux(tmp_path, "tiny-schnell")
    (tmp_path / "transformer" / "config.json").write_text('{"num_layers": "many"')
    with pytest.raises(CheckpointError, match="Could not read Diffusers config.json"):
        load_flux(tmp_path, "tiny-dev")


def test_load_flux_folder_errors_are_checkpoint_errors(tmp_path: Path) -> None:
    save_tiny_transformer(tmp_path, TINY_DEV)
    index = tmp_path / "transformer" / INDEX
    weight_map = json.loads(index.read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[-1]
    (tmp_path / "transformer" / shard).unlink()
    with pytest.raises(CheckpointError, match=f"Shard '{shard}' not found"):
        load_flux(tmp_path / "transformer", TINY_DEV)
    index.write_text("{")
    with pytest.raises(CheckpointError, match="Could not read Sharded weights index"):
        load_flux(tmp_path / "transformer", TINY_DEV)


def test_load_flux_mismatch_hint_no_longer_asks_for_manual_conversion(tmp_path: Path) -> None:
    path = tmp_path / "flux.safetensors"
    save_file(tiny_flux(TINY_DEV).state_dict(), str(path))
    with pytest.raises(CheckpointError) as error:
        load_flux(path, replace(TINY_DEV, guidance_embed=False))
    assert "guidance_in" in str(error.value)
    assert "converted with" not in str(error.value)


def test_bfl_autoencoder_shape_mismatch_is_a_checkpoint_error(tmp_path: Path) -> None:
    bfl = {k: v.contiguous() for k, v in diffusers_ae_to_bfl(tiny_autoencoder().state_dict()).items()}
    good = tmp_path / "ae.safetensors"
    save_file(bfl, str(good))
    vae = load_autoencoder(good)
    assert list(vae.config.block_out_channels) == TINY_AE_CONFIG["block_out_channels"]
    # A norm whose size does not match the convolutions around it: the whole state dict is checked first.
    bfl["decoder.norm_out.weight"] = torch.ones(3)
    broken = tmp_path / "broken.safetensors"
    save_file(bfl, str(broken))
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatches.*decoder\.conv_norm_out\.weight"):
        load_autoencoder(broken)


# ---------------------------------------------------------------------------------------------- HunyuanVideo


def write_hunyuan_folder(root: Path) -> Path:
    to_diffusers_transformer(tiny_transformer()).save_pretrained(root / "transformer")
    return root


def test_hunyuan_config_errors_are_checkpoint_errors(tmp_path: Path) -> None:
    root = write_hunyuan_folder(tmp_path)
    config_path = root / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    for change, match in (
        ({"image_condition_type": "token_replace"}, "image_condition_type"),
        ({"rope_axes_dim": [4, 6, 8]}, r"(?s)not a supported HunyuanVideo transformer config.*head dim"),
        ({"num_layers": [1]}, "not a supported HunyuanVideo transformer config"),
    ):
        config_path.write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=match):
            load_hunyuan_video(root)
    config_path.write_text("{")
    with pytest.raises(CheckpointError, match="Could not read Diffusers config.json"):
        load_hunyuan_video(root)


def test_hunyuan_sharded_index_is_validated(tmp_path: Path) -> None:
    folder = tmp_path / "transformer"
    to_diffusers_transformer(tiny_transformer()).save_pretrained(folder, max_shard_size="200KB")
    index = folder / INDEX
    content = json.loads(index.read_text())
    shard = sorted(set(content["weight_map"].values()))[0]
    content["weight_map"]["extra.weight"] = shard
    index.write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=r"(?s)listed for .* but absent.*extra\.weight"):
        load_hunyuan_video(tmp_path)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map"):
        load_hunyuan_video(tmp_path)
    index.write_text("{")
    with pytest.raises(CheckpointError, match="Could not read Sharded weights index"):
        load_hunyuan_video(tmp_path)


def test_hunyuan_folder_without_config_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tiny_transformer().state_dict().items()}, str(folder / SINGLE))
    with pytest.raises(
        CheckpointError, match=r"(?s)HunyuanVideo .* is not a diffusers model folder.*transformer/ subfolder"
    ):
        load_hunyuan_video(folder)


def test_hunyuan_vae_config_errors_are_checkpoint_errors(tmp_path: Path) -> None:
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": ')
    with pytest.raises(CheckpointError, match=r"(?s)Could not read VAE config\.json.*vae"):
        load_vae(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="VAE config.json not found"):
        load_vae(folder)


def test_hunyuan_duplicates_are_gone() -> None:
    assert not hasattr(hunyuan_model, "OFFICIAL_CHECKPOINT")
    assert not hasattr(hunyuan_vae, "SCALING_FACTOR")
    assert not hasattr(hunyuan_weights, "load_transformer")
    with pytest.raises(CheckpointError, match=hunyuan_weights.OFFICIAL_DIT.replace(".", r"\.")):
        load_hunyuan_video("nowhere.pt")


# ------------------------------------------------------------------------------ shard index confinement


def point_index_at(folder: Path, shard: str) -> None:
    """Rewrite the index so that the first shard's tensor (a.weight) is listed in ``shard`` instead."""
    content = json.loads((folder / INDEX).read_text())
    content["weight_map"]["a.weight"] = shard
    (folder / INDEX).write_text(json.dumps(content))


def outside_shard(tmp_path: Path) -> Path:
    """A file outside the checkpoint folder holding exactly a.weight: the index entry would load it if allowed."""
    path = tmp_path / "elsewhere" / "a.safetensors"
    path.parent.mkdir()
    save_file({"a.weight": tensors()["a.weight"]}, str(path))
    return path


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "backslash dotdot", "symlink", "dangling symlink", "empty"])
def test_shard_paths_must_stay_inside_the_checkpoint_folder(kind: str, tmp_path: Path) -> None:
    folder = write_sharded(tmp_path / "m")
    target = outside_shard(tmp_path)
    (folder / "model-00001-of-00002.safetensors").unlink()
    if kind == "absolute":
        shard = str(target)
    elif kind == "dotdot":
        shard = "../elsewhere/a.safetensors"
    elif kind == "backslash dotdot":
        shard = "..\\elsewhere\\a.safetensors"
    elif kind == "empty":
        shard = ""
    else:
        shard = "linked.safetensors"
        (folder / shard).symlink_to(target if kind == "symlink" else tmp_path / "gone.safetensors")
    point_index_at(folder, shard)
    with pytest.raises(CheckpointError) as info:
        read_diffusers_weights(folder)
    message = str(info.value)
    assert message.startswith("Sharded weights index lists a shard outside its folder:")
    assert f"entry: 'a.weight' -> {shard!r}" in message and str(folder / INDEX) in message
    assert f"Shards must be files inside {folder}/" in message


def test_shards_inside_the_folder_and_hugging_face_cache_symlinks_are_read(tmp_path: Path) -> None:
    """A shard in a subfolder or linked within the folder is inside; the Hugging Face cache keeps snapshot files as
    symlinks into the repository's blobs/, which is allowed too."""
    folder = write_sharded(tmp_path / "m")
    (folder / "sub").mkdir()
    (folder / "model-00001-of-00002.safetensors").rename(folder / "sub" / "first.safetensors")
    point_index_at(folder, "sub/first.safetensors")
    assert_equal_dicts(read_diffusers_weights(folder), tensors())

    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = write_sharded(repo / "snapshots" / "0123abc" / "transformer")
    (repo / "blobs").mkdir()
    for shard in sorted(snapshot.glob("model-*.safetensors")):
        blob = repo / "blobs" / f"blob-{shard.name}"
        shard.rename(blob)
        shard.symlink_to(Path("..", "..", "..", "blobs", blob.name))
    assert_equal_dicts(read_diffusers_weights(snapshot), tensors())

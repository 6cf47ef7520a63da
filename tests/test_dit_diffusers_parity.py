"""Our DiT and diffusers' DiTTransformer2DModel compute the same function once the weights are remapped.

Tiny fp32 models on CPU. All parameters except ``pos_embed`` are randomised because DiT's init zeroes the adaLN and
final layers, which would make both outputs trivially zero and the comparison meaningless.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel
from dit_testing import randomised
from safetensors.torch import load_file, save_file

from common.checkpoint import CheckpointError
from taylorseer_dit.diffusers_format import (
    diffusers_config,
    diffusers_to_dit,
    dit_kwargs_from_diffusers_config,
    dit_to_diffusers,
)
from taylorseer_dit.models import DiT, DiT_models

INPUT_SIZE = 8
NUM_CLASSES = 10
GRID = INPUT_SIZE // 2  # DiT-Tiny/2
TOLERANCE = 1e-5


def tiny_dit(seed: int = 0) -> DiT:
    return randomised(DiT_models["DiT-Tiny/2"](input_size=INPUT_SIZE, num_classes=NUM_CLASSES), seed)


def diffusers_twin(model: DiT) -> DiTTransformer2DModel:
    twin = DiTTransformer2DModel(**diffusers_config(model))
    twin.load_state_dict(dit_to_diffusers(model.state_dict()), strict=True)
    return twin.eval()


def use_dit_timestep_frequencies(twin: DiTTransformer2DModel) -> None:
    """diffusers' CombinedTimestepLabelEmbeddings uses Timesteps(downscale_freq_shift=1), i.e. frequencies
    exp(-ln(10000) * i / (half - 1)); the original DiT divides by half. Shift 0 gives DiT's frequencies; every block
    has its own copy of the embedder (block 0's also conditions the final layer), so all are patched."""
    for block in twin.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, INPUT_SIZE, INPUT_SIZE, generator=generator)
    t = torch.tensor([0, 1, 500, 999])
    y = torch.tensor([0, 3, 9, NUM_CLASSES])  # the last is the null label used for classifier-free guidance
    return x, t, y


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@torch.no_grad()
def outputs(model: DiT, twin: DiTTransformer2DModel) -> tuple[torch.Tensor, torch.Tensor]:
    x, t, y = inputs()
    return model(x, t, y), twin(x, timestep=t, class_labels=y).sample


def test_twin_matches_dit_with_dit_timestep_frequencies():
    model = tiny_dit()
    twin = diffusers_twin(model)
    use_dit_timestep_frequencies(twin)
    ours, theirs = outputs(model, twin)
    assert ours.shape == theirs.shape == (4, 8, INPUT_SIZE, INPUT_SIZE)
    assert ours.norm() > 1.0  # not the trivial all-zero output of DiT's init
    assert relative_error(ours, theirs) < TOLERANCE


def test_diffusers_default_timestep_frequencies_differ_from_dit():
    """Guards the known deviation: if diffusers ever switches to DiT's frequencies, this fails and the patch above
    (and the note in diffusers_format's docstring) can go."""
    model = tiny_dit()
    twin = diffusers_twin(model)
    assert all(block.norm1.emb.time_proj.downscale_freq_shift == 1 for block in twin.transformer_blocks)
    ours, theirs = outputs(model, twin)
    assert relative_error(ours, theirs) > 100 * TOLERANCE


def test_diffusers_pos_embed_buffer_equals_ours():
    model = tiny_dit()
    twin = diffusers_twin(model)
    assert "pos_embed.pos_embed" not in twin.state_dict()  # non-persistent: never in diffusers checkpoints
    assert torch.equal(twin.pos_embed.pos_embed, model.pos_embed.detach())


def test_round_trip_is_exact():
    state_dict = tiny_dit().state_dict()
    back = diffusers_to_dit(dit_to_diffusers(state_dict), grid_size=GRID)
    assert sorted(back) == sorted(state_dict)
    for key, tensor in state_dict.items():
        assert back[key].dtype == tensor.dtype, key
        assert torch.equal(back[key], tensor), key


def test_depth_is_inferred_from_keys():
    model = randomised(DiT(input_size=8, patch_size=2, hidden_size=32, depth=3, num_heads=2, num_classes=5))
    converted = dit_to_diffusers(model.state_dict())
    assert {key.split(".")[1] for key in converted if key.startswith("transformer_blocks.")} == {"0", "1", "2"}
    back = diffusers_to_dit(converted, grid_size=4)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_embedders_are_copied_into_every_block():
    state_dict = tiny_dit().state_dict()
    converted = dit_to_diffusers(state_dict)
    copied = {
        "timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
        "timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
        "class_embedder.embedding_table.weight": "y_embedder.embedding_table.weight",
    }
    for i in range(2):
        for theirs, ours in copied.items():
            assert torch.equal(converted[f"transformer_blocks.{i}.norm1.emb.{theirs}"], state_dict[ours])


def test_converted_state_dict_shares_no_memory(tmp_path):
    """safetensors refuses tensors that share storage; the copies and the qkv split must be independent."""
    converted = dit_to_diffusers(tiny_dit().state_dict())
    save_file(converted, tmp_path / "model.safetensors")
    reloaded = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(reloaded[k], v) for k, v in converted.items())


def test_diverged_embedder_copy_is_rejected():
    converted = dit_to_diffusers(tiny_dit().state_dict())
    key = "transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"
    converted[key] = converted[key] + 1e-3
    with pytest.raises(CheckpointError) as error:
        diffusers_to_dit(converted, grid_size=GRID)
    assert key in str(error.value)
    assert "transformer_blocks.0." not in str(error.value)


def test_leftover_and_missing_keys_are_listed():
    converted = dit_to_diffusers(tiny_dit().state_dict())
    converted["transformer_blocks.0.norm2.weight"] = torch.ones(64)
    del converted["transformer_blocks.1.attn1.to_k.bias"]
    with pytest.raises(CheckpointError) as error:
        diffusers_to_dit(converted, grid_size=GRID)
    message = str(error.value)
    assert "transformer_blocks.0.norm2.weight" in message
    assert "transformer_blocks.1.attn1.to_k.bias" in message

    state_dict = tiny_dit().state_dict()
    state_dict["blocks.0.extra.weight"] = torch.ones(1)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.extra\.weight"):
        dit_to_diffusers(state_dict)


def test_learned_pos_embed_is_not_dropped_silently():
    state_dict = tiny_dit().state_dict()
    state_dict["pos_embed"] = state_dict["pos_embed"] + 0.01
    with pytest.raises(CheckpointError, match="sin-cos"):
        dit_to_diffusers(state_dict)


def test_config_round_trip_builds_the_same_dit():
    model = tiny_dit()
    config = {"_class_name": "Transformer2DModel", **diffusers_config(model)}
    kwargs = dit_kwargs_from_diffusers_config(config)
    rebuilt = DiT(**kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert kwargs["learn_sigma"] and kwargs["num_classes"] == NUM_CLASSES and kwargs["input_size"] == INPUT_SIZE


def test_config_that_our_dit_cannot_mirror_is_rejected():
    config = diffusers_config(tiny_dit())
    with pytest.raises(CheckpointError, match="activation_fn"):
        dit_kwargs_from_diffusers_config({**config, "activation_fn": "geglu"})
    with pytest.raises(CheckpointError, match="num_layers is missing"):
        dit_kwargs_from_diffusers_config({k: v for k, v in config.items() if k != "num_layers"})

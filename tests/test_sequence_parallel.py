"""common/sequence_parallel.py: Ulysses joint attention on 2 gloo processes equals single-process attention."""

import math
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.sequence_parallel import (
    SequenceParallel,
    gather_sequence,
    joint_attention,
    shard_sequence,
    ulysses_joint_attention,
)

WORLD = 2
B, H, D, L_IMG_LOCAL, L_TXT = 2, 4, 8, 8, 5
TOLERANCE = 1e-5
# A fake rank of a 2-rank group, for the checks that must fail before any collective is reached.
FAKE_SP = SequenceParallel(group=None, rank=0, world_size=WORLD)
Inputs = dict[str, torch.Tensor]


def joint_inputs(seed: int, masked: bool, len_img: int = WORLD * L_IMG_LOCAL, heads: int = H) -> Inputs:
    """Full (unsharded) fp32 inputs; ``masked`` pads the last two text tokens of batch element 1."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {f"{name}_img": torch.randn(B, len_img, heads, D, generator=gen) for name in "qkv"}
    inputs |= {f"{name}_txt": torch.randn(B, L_TXT, heads, D, generator=gen) for name in "qkv"}
    mask = torch.ones(B, L_TXT, dtype=torch.bool)
    mask[1, -2:] = False
    inputs["txt_key_mask"] = mask if masked else None
    return inputs


def local_inputs(inputs: Inputs, sp: SequenceParallel) -> Inputs:
    return {name: shard_sequence(x, 1, sp) if name.endswith("_img") else x for name, x in inputs.items()}


CASES = {"unmasked": joint_inputs(0, masked=False), "masked": joint_inputs(1, masked=True)}


def worker(rank: int, port: int, out_dir: Path) -> None:
    """One rank: Ulysses attention on its image shard of every case, plus a shard/gather round trip, saved to a file."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        results = {}
        sps = {"default": SequenceParallel.from_default_group(), "group": SequenceParallel.from_group(dist.new_group())}
        for group_name, sp in sps.items():
            assert (sp.rank, sp.world_size) == (rank, WORLD)
            for case, inputs in CASES.items():
                results[f"{group_name}/{case}"] = ulysses_joint_attention(**local_inputs(inputs, sp), sp=sp)
        full = torch.randn(3, WORLD * 6, 7, generator=torch.Generator().manual_seed(2))
        results["round_trip"] = (full, gather_sequence(shard_sequence(full, 1, sps["default"]), 1, sps["default"]))
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    """The two ranks' results. A failing worker raises here with its traceback (mp.spawn re-raises it)."""
    out_dir = tmp_path_factory.mktemp("sp")
    mp.spawn(worker, args=(free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("group", ["default", "group"])
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_match_single_process_attention(rank_results, case, group):
    out_img, out_txt = joint_attention(**CASES[case])
    for rank, results in enumerate(rank_results):
        rank_img, rank_txt = results[f"{group}/{case}"]
        expected_img = out_img[:, rank * L_IMG_LOCAL : (rank + 1) * L_IMG_LOCAL]
        assert rank_img.shape == expected_img.shape == (B, L_IMG_LOCAL, H, D)
        assert rank_txt.shape == out_txt.shape == (B, L_TXT, H, D)
        assert (rank_img - expected_img).abs().max() < TOLERANCE, f"rank {rank} image shard"
        assert (rank_txt - out_txt).abs().max() < TOLERANCE, f"rank {rank} text"
    assert torch.equal(rank_results[0][f"{group}/{case}"][1], rank_results[1][f"{group}/{case}"][1])


def test_two_ranks_gather_their_shards_back(rank_results):
    for results in rank_results:
        full, gathered = results["round_trip"]
        assert torch.equal(gathered, full)


def test_shard_sequence_takes_contiguous_chunks_in_rank_order():
    x = torch.arange(2 * 6 * 3).reshape(2, 6, 3)
    shards = [shard_sequence(x, 1, SequenceParallel(None, rank, 3)) for rank in range(3)]
    assert all(shard.is_contiguous() and shard.shape == (2, 2, 3) for shard in shards)
    assert torch.equal(torch.cat(shards, dim=1), x)
    assert torch.equal(shards[1], x[:, 2:4])
    single = SequenceParallel(None, 0, 1)
    assert shard_sequence(x, 1, single) is x and gather_sequence(x, 1, single) is x


def test_indivisible_lengths_and_heads_raise_before_any_collective():
    with pytest.raises(ValueError, match=r"Cannot split 7 tokens \(dim 1\) evenly across 2"):
        shard_sequence(torch.zeros(1, 7, 4), 1, FAKE_SP)
    inputs = joint_inputs(3, masked=False, heads=3)
    with pytest.raises(ValueError, match="splits the 3 attention heads across 2"):
        ulysses_joint_attention(**local_inputs(inputs, FAKE_SP), sp=FAKE_SP)


def test_invalid_groups_and_shapes_raise():
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        SequenceParallel(None, 2, 2)
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        SequenceParallel.from_default_group()
    inputs = joint_inputs(4, masked=True)
    with pytest.raises(ValueError, match="txt_key_mask must be a bool tensor"):
        joint_attention(**(inputs | {"txt_key_mask": inputs["txt_key_mask"].float()}))
    with pytest.raises(ValueError, match="q_txt, k_txt, v_txt must share"):
        joint_attention(**(inputs | {"k_txt": inputs["k_txt"][:, :, :2]}))


@pytest.mark.parametrize("masked", [False, True])
def test_world_size_one_is_joint_attention_without_collectives(monkeypatch, masked):
    def no_collective(*args, **kwargs):
        raise AssertionError("world size 1 must not communicate")

    for name in ("all_to_all_single", "all_gather", "all_to_all"):
        monkeypatch.setattr(dist, name, no_collective)
    inputs = joint_inputs(5, masked=masked)
    expected = joint_attention(**inputs)
    for sp in (None, SequenceParallel(None, 0, 1)):
        out = ulysses_joint_attention(**inputs, sp=sp)
        assert all(torch.equal(a, b) for a, b in zip(out, expected, strict=True))


def reference_attention(inputs: Inputs) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D) + mask) V in float64 over [img; txt], written out; (B, L, H, D)."""
    q, k, v = (torch.cat([inputs[f"{n}_img"], inputs[f"{n}_txt"]], dim=1).double() for n in "qkv")
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
    if inputs["txt_key_mask"] is not None:
        keys = torch.cat([torch.ones(B, q.shape[1] - L_TXT, dtype=torch.bool), inputs["txt_key_mask"]], dim=1)
        scores = scores.masked_fill(~keys[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)


@pytest.mark.parametrize("masked", [False, True])
def test_joint_attention_matches_written_out_softmax(masked):
    inputs = joint_inputs(6, masked=masked, len_img=11)
    out_img, out_txt = joint_attention(**inputs)
    expected = reference_attention(inputs)
    assert out_img.shape == (B, 11, H, D) and out_txt.shape == (B, L_TXT, H, D)
    assert (torch.cat([out_img, out_txt], dim=1).double() - expected).abs().max() < TOLERANCE


def test_padded_text_keys_do_not_influence_the_output():
    inputs = joint_inputs(7, masked=True)
    padded = ~inputs["txt_key_mask"]
    changed = dict(inputs)
    for name in ("k_txt", "v_txt"):
        changed[name] = inputs[name].clone()
        changed[name][padded] = 1e4 * torch.randn(int(padded.sum()), H, D)
    unmasked = joint_attention(**(changed | {"txt_key_mask": None}))
    assert (unmasked[0] - joint_attention(**inputs)[0]).abs().max() > 1  # the change would matter unmasked
    for original, out in zip(joint_attention(**inputs), joint_attention(**changed), strict=True):
        assert torch.equal(original, out)
    # ... and likewise through the Ulysses entry point without a group.
    assert torch.equal(ulysses_joint_attention(**changed, sp=None)[0], joint_attention(**inputs)[0])


def test_masked_attention_equals_attention_over_the_real_tokens_only():
    """The mask is equivalent to dropping the padded text tokens, as HunyuanVideo's varlen flash-attn does."""
    inputs = joint_inputs(8, masked=True)
    out_img, out_txt = joint_attention(**inputs)
    real = inputs["txt_key_mask"][1]
    trimmed = {f"{n}_img": inputs[f"{n}_img"][1:2] for n in "qkv"}
    trimmed |= {f"{n}_txt": inputs[f"{n}_txt"][1:2, real] for n in "qkv"}
    alone_img, alone_txt = joint_attention(**trimmed, txt_key_mask=None)
    assert (out_img[1:2] - alone_img).abs().max() < TOLERANCE
    assert (out_txt[1:2, real] - alone_txt).abs().max() < TOLERANCE

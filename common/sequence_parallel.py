"""Ulysses sequence parallelism: one sample's image tokens split across the ranks of a process group.

DeepSpeed-Ulysses (Jacobs et al., arXiv 2309.14509), in the joint-text form that xDiT/xfuser's USP uses for
HunyuanVideo (``ulysses_degree=K, ring_degree=1``, text tokens joined at the rear). Everything outside attention is
token-wise, so each rank runs the blocks on its own contiguous shard of the image tokens. Attention needs every token:
an all-to-all turns (sequence shard, all heads) into (full sequence, H/K heads), each rank attends for its heads, and a
second all-to-all turns the result back.

The text tokens are *replicated* on every rank rather than sharded. They are few (at most 256 in HunyuanVideo against
tens of thousands of image tokens), so replicating them costs little, and it keeps every rank's state self-contained:
each rank's TaylorSeer cache holds the features of its own image shard plus the full text tokens, the full-vs-forecast
schedule is a function of the step alone, so ranks stay in lock step, and forecast steps need no communication at all
(reference-semantics §4.6). Only the final latent is gathered.

Built on ``torch.distributed`` collectives (``all_to_all_single``, ``all_gather``), so it runs with NCCL on GPUs and
with gloo on CPU (where the tests run it). The collectives are not autograd-aware: this is for inference only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.attention import masked_attention

__all__ = ["SequenceParallel", "shard_sequence", "gather_sequence", "ulysses_joint_attention", "joint_attention"]


@dataclass(frozen=True)
class SequenceParallel:
    """One sequence-parallel group: the image tokens of one sample are split across its ranks.

    ``rank`` is the rank *within* ``group``: shard ``rank`` of the sequence lives on it, and it attends for heads
    ``[rank * H / world_size, (rank + 1) * H / world_size)``.
    """

    group: dist.ProcessGroup | None
    """The process group; None is the default (WORLD) group."""
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"SequenceParallel needs 0 <= rank < world_size, got rank={self.rank}, "
                             f"world_size={self.world_size}")  # fmt: skip

    @classmethod
    def from_group(cls, group: dist.ProcessGroup | None) -> SequenceParallel:
        """All ranks of ``group`` (None: the default group) of the initialised default process group."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "Sequence parallelism needs an initialised torch.distributed process group: launch with torchrun "
                "and call torch.distributed.init_process_group() (nccl on GPUs, gloo on CPU) first."
            )
        return cls(group=group, rank=dist.get_rank(group), world_size=dist.get_world_size(group))

    @classmethod
    def from_default_group(cls) -> SequenceParallel:
        """All ranks of the initialised default group."""
        return cls.from_group(None)


def _shard_size(length: int, dim: int, sp: SequenceParallel) -> int:
    if length % sp.world_size:
        raise ValueError(f"Cannot split {length} tokens (dim {dim}) evenly across {sp.world_size} sequence-parallel "
                         f"ranks: the length must be divisible by the world size.")  # fmt: skip
    return length // sp.world_size


def shard_sequence(x: torch.Tensor, dim: int, sp: SequenceParallel) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` along ``dim`` (shards in rank order).

    Returned as a contiguous copy, so that the full tensor can be freed and the collectives get a dense buffer.
    """
    if sp.world_size == 1:
        return x
    size = _shard_size(x.shape[dim], dim, sp)
    return x.narrow(dim, sp.rank * size, size).contiguous()


def gather_sequence(x: torch.Tensor, dim: int, sp: SequenceParallel) -> torch.Tensor:
    """Inverse of :func:`shard_sequence`: concatenates every rank's shard along ``dim``; identical on all ranks.

    Every rank must pass a shard of the same shape (as :func:`shard_sequence` produces).
    """
    if sp.world_size == 1:
        return x
    x = x.contiguous()
    shards = [torch.empty_like(x) for _ in range(sp.world_size)]
    dist.all_gather(shards, x, group=sp.group)
    return torch.cat(shards, dim=dim)


def _check_joint_inputs(
    img: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    txt: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    txt_key_mask: torch.Tensor | None,
) -> None:
    shape = img[0].shape
    if img[0].dim() != 4 or any(t.shape != shape for t in img):
        raise ValueError(f"q_img, k_img, v_img must share one (B, L_img, H, D) shape, got "
                         f"{[tuple(t.shape) for t in img]}")  # fmt: skip
    batch, _, heads, head_dim = shape
    txt_shape = txt[0].shape
    same_txt = txt[0].dim() == 4 and all(t.shape == txt_shape for t in txt)
    if not same_txt or (txt_shape[0], txt_shape[2], txt_shape[3]) != (batch, heads, head_dim):
        raise ValueError(f"q_txt, k_txt, v_txt must share one (B, L_txt, H, D) shape with the image tokens' B={batch}, "
                         f"H={heads}, D={head_dim}, got {[tuple(t.shape) for t in txt]}")  # fmt: skip
    if txt_key_mask is not None and (txt_key_mask.dtype != torch.bool or txt_key_mask.shape != txt_shape[:2]):
        raise ValueError(f"txt_key_mask must be a bool tensor of shape (B, L_txt) = {tuple(txt_shape[:2])}, got "
                         f"{txt_key_mask.dtype} {tuple(txt_key_mask.shape)}")  # fmt: skip


def joint_attention(
    q_img: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    q_txt: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    txt_key_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full attention over the joint sequence ``[image tokens; text tokens]`` in one process.

    All inputs are (B, L, H, D) with the image and text lengths of their own; ``txt_key_mask`` (B, L_txt) marks real
    text tokens (True) among padding. Padded text tokens are masked out as *keys* only: their query rows are still
    computed (over the real keys) and are meaningless but finite, as every row has at least the image keys to attend to.
    Returns (out_img (B, L_img, H, D), out_txt (B, L_txt, H, D)), views into one joint result.

    Through :func:`common.attention.masked_attention`: flash-attn for half precision on GPU without a mask, PyTorch
    SDPA with a boolean key mask otherwise, since flash-attn's dense kernel takes no mask.
    """
    _check_joint_inputs((q_img, k_img, v_img), (q_txt, k_txt, v_txt), txt_key_mask)
    len_img = q_img.shape[1]
    # (B, L_img + L_txt, H, D) -> (B, H, L, D)
    q, k, v = (torch.cat(pair, dim=1).transpose(1, 2) for pair in ((q_img, q_txt), (k_img, k_txt), (v_img, v_txt)))
    key_mask = None
    if txt_key_mask is not None:
        key_mask = torch.cat([txt_key_mask.new_ones(txt_key_mask.shape[0], len_img), txt_key_mask], dim=1)  # (B, L)
    out = masked_attention(q, k, v, key_mask).transpose(1, 2)  # (B, L, H, D)
    return out[:, :len_img], out[:, len_img:]


def _sequence_to_heads(x: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """(N, L_local, H, D) with all heads -> (N, L_local * world_size, H / world_size, D) with this rank's heads."""
    n, len_local, heads, head_dim = x.shape
    p = sp.world_size
    # Chunk j of dim 0 goes to rank j: our sequence shard, rank j's heads.
    send = x.reshape(n, len_local, p, heads // p, head_dim).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=sp.group)
    # recv[j]: rank j's sequence shard, our heads; shards in rank order make the full sequence.
    return recv.permute(1, 0, 2, 3, 4).reshape(n, p * len_local, heads // p, head_dim)


def _heads_to_sequence(
    out_img: torch.Tensor, out_txt: torch.Tensor, sp: SequenceParallel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse all-to-all for the image output, with the text output gathered over heads in the same collective.

    out_img (B, L_img, H/P, D) and out_txt (B, L_txt, H/P, D) hold this rank's heads. Every rank needs the text
    output of all heads, so each rank's text slice rides along in every chunk it sends: one collective instead of an
    all-to-all plus an all-gather, for the same bytes.
    """
    batch, len_img, local_heads, head_dim = out_img.shape
    len_txt = out_txt.shape[1]
    p = sp.world_size
    len_local = len_img // p
    # Chunk j: rank j's sequence shard of our heads' image output, then our heads' text output.
    img = out_img.reshape(batch, p, len_local, local_heads, head_dim).transpose(0, 1).reshape(p, -1)
    txt = out_txt.reshape(1, -1).expand(p, -1)
    send = torch.cat([img, txt], dim=1)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=sp.group)
    # recv[j]: rank j's heads (heads j*H/P ... (j+1)*H/P - 1) for our shard and for the text; heads follow rank order.
    recv_img, recv_txt = recv.split([img.shape[1], txt.shape[1]], dim=1)
    out_img = recv_img.reshape(p, batch, len_local, local_heads, head_dim).permute(1, 2, 0, 3, 4)
    out_txt = recv_txt.reshape(p, batch, len_txt, local_heads, head_dim).permute(1, 2, 0, 3, 4)
    return (out_img.reshape(batch, len_local, p * local_heads, head_dim),
            out_txt.reshape(batch, len_txt, p * local_heads, head_dim))  # fmt: skip


def ulysses_joint_attention(
    q_img: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    q_txt: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    txt_key_mask: torch.Tensor | None,
    sp: SequenceParallel | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`joint_attention` over all ranks' image tokens, with each rank holding one shard of them.

    q_img/k_img/v_img: (B, L_img_local, H, D), this rank's shard of the image tokens (shards in rank order, the same
    L_img_local on every rank); q_txt/k_txt/v_txt: (B, L_txt, H, D), the full text tokens, identical on every rank;
    txt_key_mask: (B, L_txt) bool (True = real token) or None.

    Returns (out_img_local (B, L_img_local, H, D), out_txt (B, L_txt, H, D) identical on every rank), equal up to
    floating-point rounding to :func:`joint_attention` over the gathered image tokens. ``sp`` None or of world size 1
    is exactly :func:`joint_attention`, without any collective. Two all-to-alls per call, no autograd (inference only).
    """
    if sp is None or sp.world_size == 1:
        return joint_attention(q_img, k_img, v_img, q_txt, k_txt, v_txt, txt_key_mask)
    _check_joint_inputs((q_img, k_img, v_img), (q_txt, k_txt, v_txt), txt_key_mask)
    heads = q_img.shape[2]
    if heads % sp.world_size:
        raise ValueError(f"Ulysses attention splits the {heads} attention heads across {sp.world_size} "
                         f"sequence-parallel ranks: the head count must be divisible by the world size.")  # fmt: skip
    # One all-to-all for q, k and v together: (3B, L_local, H, D) -> (3B, L_img, H/P, D).
    q_img, k_img, v_img = _sequence_to_heads(torch.cat([q_img, k_img, v_img]), sp).chunk(3)
    # The text tokens are replicated, so this rank's heads of them are a slice; no communication needed.
    local_heads = heads // sp.world_size
    heads_slice = slice(sp.rank * local_heads, (sp.rank + 1) * local_heads)
    q_txt, k_txt, v_txt = (t[:, :, heads_slice] for t in (q_txt, k_txt, v_txt))
    out_img, out_txt = joint_attention(q_img, k_img, v_img, q_txt, k_txt, v_txt, txt_key_mask)
    return _heads_to_sequence(out_img, out_txt, sp)

"""FLUX's two text encoders through transformers, with the semantics of BFL's ``HFEmbedder``.

* T5-XXL (``T5EncoderModel``): the prompt's token sequence, ``last_hidden_state`` (B, max_length, 4096), with
  ``max_length`` 512 for FLUX.1-dev and 256 for FLUX.1-schnell.
* CLIP-L (``CLIPTextModel``): one pooled vector per prompt, ``pooler_output`` (B, 768), ``max_length`` 77.

Both tokenize with ``padding="max_length"`` and ``truncation=True`` and run the encoder without an attention mask,
as BFL's ``flux.modules.conditioner.HFEmbedder`` and diffusers' ``FluxPipeline`` do: the padding tokens are part of
what the transformer was trained to read.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from common.checkpoint import CheckpointError

__all__ = ["HFEmbedder", "load_t5", "load_clip", "CLIP_MAX_LENGTH", "T5_MAX_LENGTH"]

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
"""The most T5 tokens FLUX was trained with (FLUX.1-dev's default; FLUX.1-schnell uses 256)."""


class HFEmbedder(nn.Module):
    """A tokenizer and a transformers text encoder: prompts -> the encoder output named ``output_key``."""

    def __init__(self, tokenizer, encoder: nn.Module, max_length: int, output_key: str) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.max_length = max_length
        self.output_key = output_key

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts),
            truncation=True,
            max_length=self.max_length,
            return_length=False,
            return_overflowing_tokens=False,
            padding="max_length",
            return_tensors="pt",
        )
        # No attention mask, as BFL and diffusers: every position, padding included, is encoded.
        outputs = self.encoder(input_ids=tokens["input_ids"].to(self.device), attention_mask=None)
        return outputs[self.output_key]


def _load(model_cls: type, model_dir: Path, tokenizer_dir: Path, dtype: torch.dtype, what: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        encoder = model_cls.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"Could not load the {what} from\n  model:     {Path(model_dir).absolute()}\n"
            f"  tokenizer: {Path(tokenizer_dir).absolute()}\n  reason: {exc}"
        ) from exc
    return tokenizer, encoder


def load_t5(
    model_dir: str | Path,
    tokenizer_dir: str | Path,
    max_length: int = T5_MAX_LENGTH,
    dtype: torch.dtype = torch.float32,
) -> HFEmbedder:
    """T5-XXL's encoder on the CPU, offline (``T5EncoderModel``: ``AutoModel`` would build the encoder-decoder)."""
    from transformers import T5EncoderModel

    tokenizer, encoder = _load(T5EncoderModel, Path(model_dir), Path(tokenizer_dir), dtype, "T5 text encoder")
    return HFEmbedder(tokenizer, encoder, max_length, "last_hidden_state")


def load_clip(model_dir: str | Path, tokenizer_dir: str | Path, dtype: torch.dtype = torch.float32) -> HFEmbedder:
    """CLIP-L's text tower (``CLIPTextModel``) on the CPU, offline; its pooled output conditions FLUX's modulations."""
    from transformers import CLIPTextModel

    tokenizer, encoder = _load(CLIPTextModel, Path(model_dir), Path(tokenizer_dir), dtype, "CLIP text encoder")
    return HFEmbedder(tokenizer, encoder, CLIP_MAX_LENGTH, "pooler_output")

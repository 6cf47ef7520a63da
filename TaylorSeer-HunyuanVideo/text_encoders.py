"""HunyuanVideo's two text encoders through transformers: LLaVA-LLaMA-3 token states and CLIP-L's pooled vector.

The LLM sees the prompt inside an instruction template (upstream ``hyvideo/constants.py``, ``dit-llm-encode-video``)
and the transformer gets the hidden states of its *prompt* tokens only: the template's tokens are cropped away
(upstream ``TextEncoder.encode``). Upstream hard-codes the crop as ``crop_start = 95`` for the LLaMA-3 tokenizer;
here it is computed by tokenizing the template's prefix (everything before ``{}``), which gives 95 for LLaMA-3 and the
right number for any other tokenizer (the tests' tiny word-level ones included).

Where 95 comes from: ``<|begin_of_text|>``, ``<|start_header_id|>``, ``system``, ``<|end_header_id|>``, ``\\n\\n``,
then 85 tokens of instructions, then ``<|eot_id|>``, ``<|start_header_id|>``, ``user``, ``<|end_header_id|>``,
``\\n\\n``: 10 + 85 = 95. Each word, digit, punctuation run and the lone space before "1." of the instruction text
is one LLaMA-3 token (55 words, 5 digits, 24 runs such as ``.`` and ``,``, 1 space = 85); the tests rebuild this count
with LLaMA-3's pre-tokenizer regex and a vocabulary holding each of those pieces.

Token sequences are padded (right) and truncated to ``text_len + crop_start`` tokens, so after the crop every prompt
has exactly ``text_len`` (256) positions, and the attention mask, cropped the same way, marks its real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "PROMPT_TEMPLATE_ENCODE",
    "PROMPT_TEMPLATE_ENCODE_VIDEO",
    "PROMPT_TEMPLATES",
    "UPSTREAM_CROP_START",
    "NEGATIVE_PROMPT",
    "CLIP_MAX_LENGTH",
    "template_crop_start",
    "TextEmbeddings",
    "LlamaTextEncoder",
    "ClipTextEncoder",
]

PROMPT_TEMPLATE_ENCODE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
PROMPT_TEMPLATE_ENCODE_VIDEO = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
PROMPT_TEMPLATES = {"dit-llm-encode": PROMPT_TEMPLATE_ENCODE, "dit-llm-encode-video": PROMPT_TEMPLATE_ENCODE_VIDEO}
UPSTREAM_CROP_START = {"dit-llm-encode": 36, "dit-llm-encode-video": 95}
"""Upstream's hard-coded crops, valid for the LLaMA-3 tokenizer only; :func:`template_crop_start` reproduces them."""

NEGATIVE_PROMPT = (
    "overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, bad eyes, bad limbs, distortion"
)
"""Upstream's negative prompt, used with ``cfg_scale > 1`` when none is given."""

CLIP_MAX_LENGTH = 77
"""CLIP-L's context length: prompts are padded or truncated to it."""


def template_crop_start(tokenizer, template: str) -> int:
    """Number of tokens before the prompt in ``template`` (BOS included): the template prefix, tokenized alone.

    The prefix ends in ``\\n\\n`` after a special token, so the prompt's first token never merges with it; the
    encoder checks this for every prompt anyway (see :meth:`LlamaTextEncoder.tokenize`).
    """
    return len(_template_prefix_ids(tokenizer, template))


def _template_prefix_ids(tokenizer, template: str) -> list[int]:
    """Token ids of ``template``'s prefix (everything before its one ``{}``), BOS included."""
    if template.count("{}") != 1:
        raise ValueError(f"the prompt template must contain exactly one '{{}}' placeholder, got {template!r}")
    prefix = template[: template.index("{}")]
    return list(tokenizer(prefix, add_special_tokens=True)["input_ids"])


@dataclass
class TextEmbeddings:
    """What the transformer is conditioned on, for a batch of prompts.

    ``states`` (B, text_len, D_llm) LLM token states, ``mask`` (B, text_len) 1 on real prompt tokens (None: no
    padding), ``pooled`` (B, D_clip) CLIP pooled vector.
    """

    states: torch.Tensor
    mask: torch.Tensor | None
    pooled: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> TextEmbeddings:
        """States and pooled vector in the transformer's dtype; the mask stays an integer tensor."""
        mask = None if self.mask is None else self.mask.to(device)
        return TextEmbeddings(
            self.states.to(device=device, dtype=dtype), mask, self.pooled.to(device=device, dtype=dtype)
        )


@dataclass
class LlamaTextEncoder:
    """LLaVA-LLaMA-3 (a ``LlamaModel``) as HunyuanVideo's main text encoder.

    ``hidden_state_skip_layer`` = k takes ``hidden_states[-(k + 1)]``, the output of decoder layer L - k, i.e. with
    the last k layers skipped (2, upstream's default: the third-to-last hidden state); ``apply_final_norm`` then
    applies the model's final RMSNorm to it (upstream ``--apply-final-norm``, off by default; it changes nothing for
    k = 0, whose state transformers already returns normed).
    """

    model: nn.Module
    tokenizer: object
    text_len: int = 256
    hidden_state_skip_layer: int = 2
    apply_final_norm: bool = False
    template: str = PROMPT_TEMPLATE_ENCODE_VIDEO

    def __post_init__(self) -> None:
        if self.text_len < 1:
            raise ValueError(f"text_len must be >= 1, got {self.text_len}")
        num_layers = self.model.config.num_hidden_layers
        if not 0 <= self.hidden_state_skip_layer < num_layers:
            raise ValueError(
                f"hidden_state_skip_layer must be in [0, {num_layers - 1}] for a {num_layers}-layer text encoder, "
                f"got {self.hidden_state_skip_layer}"
            )
        prefix_ids = _template_prefix_ids(self.tokenizer, self.template)  # tokenized once
        self.crop_start = len(prefix_ids)
        self._prefix_ids = torch.tensor(prefix_ids)

    @property
    def max_length(self) -> int:
        """Tokens fed to the LLM: the template prefix plus ``text_len`` prompt positions."""
        return self.crop_start + self.text_len

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Templated prompts as ``input_ids`` and ``attention_mask`` (B, max_length), right-padded and truncated."""
        batch = self.tokenizer(
            [self.template.format(p) for p in prompts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        head = batch["input_ids"][:, : self.crop_start]
        if not torch.equal(head, self._prefix_ids.expand_as(head)):
            raise ValueError(
                "the tokenized prompt does not start with the tokenized template prefix, so cropping "
                f"{self.crop_start} tokens would cut into the prompt: check the tokenizer and template"
            )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, text_len, D), mask (B, text_len)) of the prompt tokens, template cropped away."""
        device = device if device is not None else self.model.device
        batch = {k: v.to(device) for k, v in self.tokenize(prompts).items()}
        outputs = self.model(**batch, output_hidden_states=True)
        states = outputs.hidden_states[-(self.hidden_state_skip_layer + 1)]
        if self.apply_final_norm and self.hidden_state_skip_layer > 0:
            states = self.model.norm(states)
        return states[:, self.crop_start :], batch["attention_mask"][:, self.crop_start :]


@dataclass
class ClipTextEncoder:
    """CLIP-L's text tower: its ``pooler_output`` (the final-normed state at the EOS token) modulates every block.

    The attention mask is passed as upstream does; with CLIP's causal attention the EOS token never sees the padding
    after it, so the pooled vector is the same with or without it (diffusers passes none).
    """

    model: nn.Module
    tokenizer: object
    max_length: int = CLIP_MAX_LENGTH

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """(B, D_clip) pooled prompt vectors; prompts longer than ``max_length`` tokens are truncated."""
        device = device if device is not None else self.model.device
        batch = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        outputs = self.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return outputs.pooler_output

"""Tiny, offline text encoders and tokenizers in the Hugging Face folder layouts the pipelines load.

Real FLUX and HunyuanVideo folders hold T5-XXL, CLIP-L and LLaVA-LLaMA-3 with their tokenizers; none can be
downloaded here, so the tests build the same transformers classes at tiny sizes with random weights, and a
word-level tokenizer (``tokenizer.json``) that ``AutoTokenizer.from_pretrained`` loads like the real ones.
Everything is seeded, so two calls with the same arguments write identical folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

__all__ = [
    "VOCAB_WORDS",
    "save_tiny_tokenizer",
    "save_tiny_clip_text_encoder",
    "save_tiny_clip_model",
    "save_tiny_t5_encoder",
    "save_tiny_llama_encoder",
]

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

VOCAB_WORDS = tuple(
    """a an the of on in with and at by to from under over near its is are
    cat dog bird horse fish fox owl bear panda robot astronaut person woman man child people
    red blue green yellow orange purple black white golden silver pink
    car boat train bicycle house castle city street forest mountain river lake sea beach sky sun moon star stars
    flower flowers tree trees garden field snow rain night morning sunset sunrise light
    photo painting drawing portrait landscape close-up shot view style cinematic realistic detailed
    sitting running walking flying swimming playing dancing reading riding standing
    big small tall old young happy cup table book window chair wooden glass stone
    camera slowly moving pan zoom drone aerial video scene""".split()
)


def _vocab() -> dict[str, int]:
    return {token: i for i, token in enumerate((*SPECIAL_TOKENS, *VOCAB_WORDS))}


def save_tiny_tokenizer(path: str | Path, *, bos: bool, eos: bool, model_max_length: int) -> Path:
    """A lower-casing, whitespace-splitting word-level tokenizer; ``bos``/``eos`` frame every sequence as CLIP
    (both), T5 (eos only) and LLaMA (bos only) do. Unknown words map to ``<unk>``."""
    tokenizer = Tokenizer(models.WordLevel(_vocab(), unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    template = " ".join([*(["<s>"] if bos else []), "$A", *(["</s>"] if eos else [])])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=model_max_length,
    )
    path = Path(path)
    fast.save_pretrained(path)
    return path


def _clip_text_config(hidden_size: int, max_length: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(_vocab()),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        projection_dim=hidden_size,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def save_tiny_clip_text_encoder(
    model_dir: str | Path, tokenizer_dir: str | Path, hidden_size: int = 16, max_length: int = 77, seed: int = 0
) -> CLIPTextModel:
    """CLIP-L's role at tiny size: a ``CLIPTextModel`` whose ``pooler_output`` (B, hidden_size) is the pooled
    prompt vector, and its tokenizer (bos + eos, 77 tokens as CLIP)."""
    torch.manual_seed(seed)
    model = CLIPTextModel(_clip_text_config(hidden_size, max_length)).eval()
    model.save_pretrained(model_dir)
    save_tiny_tokenizer(tokenizer_dir, bos=True, eos=True, model_max_length=max_length)
    return model


def save_tiny_clip_model(path: str | Path, hidden_size: int = 16, image_size: int = 32, seed: int = 0) -> CLIPModel:
    """A full tiny ``CLIPModel`` (text + vision towers), its image processor and tokenizer in one folder, the layout
    of ``openai/clip-vit-large-patch14`` that CLIP-score metrics load."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=_clip_text_config(hidden_size, 77).to_dict(),
        vision_config={
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
            "projection_dim": hidden_size,
        },
        projection_dim=hidden_size,
    )
    model = CLIPModel(config).eval()
    path = Path(path)
    model.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    save_tiny_tokenizer(path, bos=True, eos=True, model_max_length=77)
    return model


def save_tiny_t5_encoder(
    model_dir: str | Path, tokenizer_dir: str | Path, d_model: int = 32, max_length: int = 512, seed: int = 0
) -> T5EncoderModel:
    """T5-XXL's role at tiny size: a ``T5EncoderModel`` whose ``last_hidden_state`` (B, L, d_model) is the text
    sequence, and its tokenizer (eos only, as T5)."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(_vocab()),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    model = T5EncoderModel(config).eval()
    model.save_pretrained(model_dir)
    save_tiny_tokenizer(tokenizer_dir, bos=False, eos=True, model_max_length=max_length)
    return model


def save_tiny_llama_encoder(
    model_dir: str | Path, tokenizer_dir: str | Path, hidden_size: int = 32, num_layers: int = 4, seed: int = 0
) -> LlamaModel:
    """The LLaVA-LLaMA-3 text encoder's role at tiny size: a ``LlamaModel`` (HunyuanVideo reads an intermediate
    hidden state, so it has a few layers), and its tokenizer (bos only, as LLaMA)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(_vocab()),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    model = LlamaModel(config).eval()
    model.save_pretrained(model_dir)
    save_tiny_tokenizer(tokenizer_dir, bos=True, eos=False, model_max_length=512)
    return model

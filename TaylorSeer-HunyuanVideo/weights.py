"""Where HunyuanVideo's six components live on disk, and the one way each is loaded (offline, never downloaded).

Two layouts are recognised under ``--model-base`` (default ``$MODEL_BASE``, else ``ckpts`` in the working directory,
as upstream):

* diffusers (``hunyuanvideo-community/HunyuanVideo``), recognised by ``transformer/`` or ``model_index.json``:
  ``transformer/`` (config.json + safetensors), ``vae/``, ``text_encoder/`` (LlamaModel), ``tokenizer/``,
  ``text_encoder_2/`` (CLIPTextModel), ``tokenizer_2/``;
* upstream (``tencent/HunyuanVideo``, ``ckpts/README.md``) otherwise:
  ``hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt``, ``hunyuan-video-t2v-720p/vae/``
  (AutoencoderKLCausal3D config.json + pytorch_model.pt), ``text_encoder/`` (LLaVA-LLaMA-3's language model and
  its tokenizer in one folder) and ``text_encoder_2/`` (``openai/clip-vit-large-patch14``, tokenizer included).

``--dit-weight`` replaces the transformer's path in either layout. Every component is checked before anything is
loaded, and all missing ones are reported together in one :class:`~common.checkpoint.CheckpointError` that names
each expected path and where to get it. Everything is read with ``local_files_only=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import CheckpointError, load_state_dict_checked, read_json_object, read_state_dict
from common.integrity import weights_fingerprint

from .model import HunyuanVideo, load_hunyuan_video
from .text_encoders import ClipTextEncoder, LlamaTextEncoder
from .vae import OFFICIAL_VAE_WEIGHTS, official_vae_config, official_vae_state_dict

__all__ = [
    "MODEL_BASE_ENV",
    "DEFAULT_MODEL_BASE",
    "PRECISIONS",
    "Component",
    "ModelFiles",
    "default_model_base",
    "find_model_files",
    "check_model_files",
    "weights_id",
    "load_llama_encoder",
    "load_clip_encoder",
    "load_vae",
    "HunyuanVideoComponents",
    "load_components",
]

MODEL_BASE_ENV = "MODEL_BASE"
"""Upstream's environment variable for the checkpoint root (``hyvideo/constants.py``)."""
DEFAULT_MODEL_BASE = "ckpts"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Upstream's precision names."""

OFFICIAL_REPO = "tencent/HunyuanVideo"
DIFFUSERS_REPO = "hunyuanvideo-community/HunyuanVideo"
OFFICIAL_DIT = "hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt"
OFFICIAL_VAE = "hunyuan-video-t2v-720p/vae"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_LLAVA_HELP = (
    "xtuner/llava-llama-3-8b-v1_1-transformers converted by upstream's "
    "hyvideo/utils/preprocess_text_encoder_tokenizer_utils.py (see ckpts/README.md of "
    f"{OFFICIAL_REPO}), or the text_encoder/ and tokenizer/ files of {DIFFUSERS_REPO} copied into one folder"
)
_CLIP_HELP = (
    f"openai/clip-vit-large-patch14 (see ckpts/README.md of {OFFICIAL_REPO}), or the text_encoder_2/ and "
    f"tokenizer_2/ files of {DIFFUSERS_REPO} copied into one folder"
)

_DIT_WEIGHT_HELP = (
    "the path given to --dit-weight: an upstream mp_rank_00_model_states.pt, a .safetensors state dict or a "
    "diffusers transformer/ folder"
)


@dataclass(frozen=True)
class Component:
    """One thing to load: a file, or a folder that must hold one file of each group in ``needs``."""

    name: str
    path: Path
    source: str
    """Where to get it, for the missing-weights message."""
    needs: tuple[tuple[str, ...], ...] = ()

    def missing(self) -> bool:
        if not self.needs:
            return not self.path.exists()
        if not self.path.is_dir():
            return True
        return any(not any((self.path / name).is_file() for name in group) for group in self.needs)

    def expected(self) -> str:
        if not self.needs:
            return str(self.path.absolute())
        files = ", ".join(" or ".join(group) for group in self.needs)
        return f"{self.path.absolute()}/ (with {files})"


@dataclass(frozen=True)
class ModelFiles:
    """The components of one checkpoint root; in the upstream layout tokenizers share their encoder's folder."""

    layout: str
    """"diffusers" or "official"."""
    root: Path
    transformer: Component
    vae: Component
    text_encoder: Component
    tokenizer: Component
    text_encoder_2: Component
    tokenizer_2: Component

    def components(self) -> list[Component]:
        unique: dict[Path, Component] = {}
        for component in (
            self.transformer,
            self.vae,
            self.text_encoder,
            self.tokenizer,
            self.text_encoder_2,
            self.tokenizer_2,
        ):
            if component.path in unique:  # upstream layout: encoder and tokenizer in one folder, reported once
                merged = unique[component.path]
                unique[component.path] = Component(
                    f"{merged.name} + {component.name}", merged.path, merged.source, merged.needs + component.needs
                )
            else:
                unique[component.path] = component
        return list(unique.values())


def default_model_base() -> str:
    """``$MODEL_BASE`` if set, else ``ckpts`` (relative to the working directory, as upstream)."""
    return os.environ.get(MODEL_BASE_ENV) or DEFAULT_MODEL_BASE


def _is_diffusers_root(root: Path) -> bool:
    return (root / "model_index.json").is_file() or (root / "transformer").is_dir()


def find_model_files(model_base: str | Path, dit_weight: str | Path | None = None) -> ModelFiles:
    """The expected path of every component under ``model_base`` (layout auto-detected; see the module docstring)."""
    root = Path(model_base).expanduser()
    if _is_diffusers_root(root):
        repo = f"{DIFFUSERS_REPO} (hf download {DIFFUSERS_REPO} --local-dir {root})"
        transformer = Component("transformer", root / "transformer", repo, (("config.json",),))
        if dit_weight is not None:
            transformer = Component("transformer (--dit-weight)", Path(dit_weight).expanduser(), _DIT_WEIGHT_HELP)
        return ModelFiles(
            "diffusers",
            root,
            transformer,
            Component("vae", root / "vae", repo, (("config.json",),)),
            Component("text_encoder", root / "text_encoder", repo, (("config.json",),)),
            Component("tokenizer", root / "tokenizer", repo, (_TOKENIZER_FILES,)),
            Component("text_encoder_2", root / "text_encoder_2", repo, (("config.json",),)),
            Component("tokenizer_2", root / "tokenizer_2", repo, (_TOKENIZER_FILES,)),
        )
    official = f"{OFFICIAL_REPO} (hf download {OFFICIAL_REPO} --local-dir {root})"
    dit = Path(dit_weight).expanduser() if dit_weight is not None else root / OFFICIAL_DIT
    return ModelFiles(
        "official",
        root,
        Component(
            "transformer" + (" (--dit-weight)" if dit_weight is not None else ""),
            dit,
            official if dit_weight is None else _DIT_WEIGHT_HELP,
        ),
        Component("vae", root / OFFICIAL_VAE, official, (("config.json",), (OFFICIAL_VAE_WEIGHTS,))),
        Component("text_encoder", root / "text_encoder", _LLAVA_HELP, (("config.json",),)),
        Component("tokenizer", root / "text_encoder", _LLAVA_HELP, (_TOKENIZER_FILES,)),
        Component("text_encoder_2", root / "text_encoder_2", _CLIP_HELP, (("config.json",),)),
        Component("tokenizer_2", root / "text_encoder_2", _CLIP_HELP, (_TOKENIZER_FILES,)),
    )


def check_model_files(files: ModelFiles) -> None:
    """Raise one CheckpointError listing every missing component, its expected path and where to get it."""
    missing = [c for c in files.components() if c.missing()]
    if not missing:
        return
    lines = [
        f"HunyuanVideo weights not found ({files.layout} layout under {files.root.absolute()}); nothing is "
        "downloaded. Missing components:"
    ]
    for component in missing:
        lines += [f"  {component.name}: {component.expected()}", f"      from {component.source}"]
    lines.append(
        f"Pass --model-base DIR with the upstream layout ({OFFICIAL_REPO}: {OFFICIAL_DIT}, {OFFICIAL_VAE}/, "
        f"text_encoder/, text_encoder_2/) or the diffusers layout ({DIFFUSERS_REPO}: transformer/, vae/, "
        "text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/); --dit-weight FILE overrides the transformer."
    )
    raise CheckpointError("\n".join(lines))


def weights_id(files: ModelFiles) -> str:
    """The content identity of every component as resolved (transformer or --dit-weight, VAE, both encoders and
    tokenizers; see :func:`common.integrity.weights_fingerprint`): other weights give another id, moved ones the
    same. Call it after :func:`check_model_files`."""
    return weights_fingerprint(component.path for component in files.components())


def _pretrained(what: str, folder: Path, load):
    """Run a ``from_pretrained`` call, turning the libraries' errors into one CheckpointError naming the folder."""
    try:
        return load()
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"Could not load the {what} from {folder.absolute()}:\n  {exc}") from exc


def load_llama_encoder(
    files: ModelFiles,
    dtype: torch.dtype = torch.float32,
    text_len: int = 256,
    hidden_state_skip_layer: int = 2,
    apply_final_norm: bool = False,
) -> LlamaTextEncoder:
    """LLaVA-LLaMA-3's language model (``AutoModel``: a ``LlamaModel``; a causal-LM folder loads without its
    head) and its tokenizer (right padding, as upstream), in eval mode on CPU."""
    from transformers import AutoModel, AutoTokenizer

    folder, tokenizer_folder = files.text_encoder.path, files.tokenizer.path
    model = _pretrained(
        "LLM text encoder", folder, lambda: AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    )
    tokenizer = _pretrained(
        "LLM tokenizer",
        tokenizer_folder,
        lambda: AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True, padding_side="right"),
    )
    try:
        return LlamaTextEncoder(
            model.eval().requires_grad_(False),
            tokenizer,
            text_len=text_len,
            hidden_state_skip_layer=hidden_state_skip_layer,
            apply_final_norm=apply_final_norm,
        )
    except ValueError as exc:  # a flag that does not fit this encoder, e.g. too large a skip for its depth
        raise CheckpointError(f"The LLM text encoder in {folder.absolute()} cannot be used as asked:\n  {exc}") from exc


def load_clip_encoder(files: ModelFiles, dtype: torch.dtype = torch.float32) -> ClipTextEncoder:
    """CLIP-L's text tower (from a CLIPTextModel or a full CLIPModel folder) and its tokenizer, eval mode, CPU."""
    from transformers import AutoTokenizer, CLIPTextModel

    folder, tokenizer_folder = files.text_encoder_2.path, files.tokenizer_2.path
    model = _pretrained(
        "CLIP text encoder", folder, lambda: CLIPTextModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    )
    tokenizer = _pretrained(
        "CLIP tokenizer",
        tokenizer_folder,
        lambda: AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True),
    )
    return ClipTextEncoder(model.eval().requires_grad_(False), tokenizer)


def load_vae(folder: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """diffusers' ``AutoencoderKLHunyuanVideo`` from a diffusers-layout ``vae/`` or an upstream one (config.json of
    ``AutoencoderKLCausal3D`` + ``pytorch_model.pt``, mapped by :mod:`.vae`), in eval mode on CPU."""
    from diffusers import AutoencoderKLHunyuanVideo

    folder = Path(folder)
    config = read_json_object(folder / "config.json", "VAE config.json")
    if config.get("_class_name") != "AutoencoderKLCausal3D":
        vae = _pretrained(
            "VAE",
            folder,
            lambda: AutoencoderKLHunyuanVideo.from_pretrained(folder, local_files_only=True, torch_dtype=dtype),
        )
        return vae.eval().requires_grad_(False)
    weights = folder / OFFICIAL_VAE_WEIGHTS
    hint = (
        f"If this upstream VAE cannot be mapped, use the diffusers-layout vae/ folder of {DIFFUSERS_REPO} instead "
        "(config.json + diffusion_pytorch_model.safetensors)."
    )
    try:
        kwargs = official_vae_config(config)
        state_dict = official_vae_state_dict(read_state_dict(weights, nested=("state_dict",)))
    except ValueError as exc:
        raise CheckpointError(f"Could not map the upstream VAE in {folder.absolute()}:\n  {exc}\n{hint}") from exc
    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo(**kwargs)
    load_state_dict_checked(vae, state_dict, str(weights.absolute()), model_desc="AutoencoderKLHunyuanVideo", hint=hint)
    # nn.Module.to: diffusers' override warns about fp32-pinned modules, which this class has none of.
    return nn.Module.to(vae, dtype=dtype).eval().requires_grad_(False)


@dataclass
class HunyuanVideoComponents:
    """Everything the pipeline needs, loaded on CPU."""

    transformer: HunyuanVideo
    vae: nn.Module
    text_encoder: LlamaTextEncoder
    text_encoder_2: ClipTextEncoder


def _check_compatible(components: HunyuanVideoComponents, files: ModelFiles) -> None:
    """The transformer's input sizes must be the encoders' and the VAE's output sizes."""
    params = components.transformer.params
    pairs = [
        ("LLM hidden size", components.text_encoder.model.config.hidden_size, params.text_states_dim),
        ("CLIP hidden size", components.text_encoder_2.model.config.hidden_size, params.text_states_dim_2),
        ("VAE latent channels", components.vae.config.latent_channels, params.in_channels),
    ]
    wrong = [f"  {what}: {got}, transformer expects {want}" for what, got, want in pairs if got != want]
    if wrong:
        raise CheckpointError(
            f"The components under {files.root.absolute()} do not belong together:\n" + "\n".join(wrong)
        )


def load_components(
    files: ModelFiles,
    model_name: str,
    *,
    dtype: torch.dtype,
    text_encoder_dtype: torch.dtype,
    vae_dtype: torch.dtype,
    load_key: str = "module",
    text_len: int = 256,
    hidden_state_skip_layer: int = 2,
    apply_final_norm: bool = False,
) -> HunyuanVideoComponents:
    """Check that every file is there (one error listing all that are not), then load all four models on CPU."""
    check_model_files(files)
    components = HunyuanVideoComponents(
        transformer=load_hunyuan_video(files.transformer.path, model_name, dtype=dtype, load_key=load_key),
        vae=load_vae(files.vae.path, vae_dtype),
        text_encoder=load_llama_encoder(files, text_encoder_dtype, text_len, hidden_state_skip_layer, apply_final_norm),
        text_encoder_2=load_clip_encoder(files, text_encoder_dtype),
    )
    _check_compatible(components, files)
    return components

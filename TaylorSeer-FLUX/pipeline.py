"""FLUX.1 text-to-image with TaylorSeer or another caching method, callable from Python.

    pipe = FluxTextToImage.from_pretrained("flux-dev", "pretrained_models/FLUX.1-dev", device="cuda",
                                           dtype=torch.bfloat16)
    config = TaylorSeerConfig(interval=6, max_order=2, first_enhance=3, derivative_start_step=2)
    result = pipe(["a red fox in the snow"], seeds=[0], width=1024, height=1024, num_steps=50, config=config)
    result.images  # (1, 3, 1024, 1024) in [-1, 1]
    toca = pipe(["a red fox in the snow"], seeds=[0], config=ToCaConfig(interval=5, first_enhance=3))
    duca = pipe(["a red fox in the snow"], seeds=[0], method="duca", config=ToCaConfig(interval=5, first_enhance=3))

One call runs BFL's ``flux.cli`` recipe on a batch: encode the prompts with T5 and CLIP, draw each image's noise
from its own seed (``get_noise(1, H, W, dtype, seed, device)``, so the batch composition never changes which noise
an image gets), pack, schedule (shifted by resolution for FLUX.1-dev, plain for schnell), denoise with the distilled
guidance embedded and a fresh cache of the method (:func:`common.methods.make_cache`), unpack and decode with the
autoencoder.
It computes what diffusers' ``FluxPipeline`` computes from the same weights and initial latents (tests/
test_flux_pipeline.py checks this).

``offload=True`` is BFL's ``--offload``: every component stays on the CPU and is moved to the device only while it
runs, so the device holds one component at a time (the transformer is the largest, ~24 GB in bf16).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from common.caching import CacheMethod
from common.delta_dit import DeltaDiTConfig
from common.methods import MethodConfig, make_cache
from common.offload import on_device
from common.taylor_cache import TaylorSeerConfig
from common.teacache import TeaCacheConfig
from common.toca import ToCaConfig
from taylorseer_flux.autoencoder import decode_latents
from taylorseer_flux.model import FluxParams
from taylorseer_flux.sampling import denoise, get_noise, get_schedule, image_ids, pack, text_ids, unpack
from taylorseer_flux.weights import (
    FLUX_MODELS,
    FluxComponents,
    FluxWeights,
    find_flux_weights,
    load_flux_components,
    transformer_params,
)

__all__ = ["FluxTextToImage", "FluxImages", "IMAGE_MULTIPLE"]

IMAGE_MULTIPLE = 16
"""Image sides must be multiples of 16 pixels: 8x autoencoder downsampling, then 2x2 patches."""

# The method a config's type means when none is named. DuCa shares ToCaConfig with ToCa, so it must be named.
_CONFIG_METHODS = {TaylorSeerConfig: "taylorseer", DeltaDiTConfig: "delta-dit", ToCaConfig: "toca",
                   TeaCacheConfig: "teacache"}  # fmt: skip
_METHOD_CONFIGS = {"taylorseer": TaylorSeerConfig, "fora": TaylorSeerConfig, "delta-dit": DeltaDiTConfig,
                   "toca": ToCaConfig, "duca": ToCaConfig, "teacache": TeaCacheConfig}  # fmt: skip


def method_cache(method: str | None, config: MethodConfig) -> CacheMethod | None:
    """A fresh cache of ``method`` with ``config`` (None: the method the config's type means; "duca" must be named),
    or None for the plain model (no config, ``method="full"``, or TaylorSeer at interval 1). A method that does not
    take the config is a ValueError, so a run is never labelled with another method than the one that ran."""
    if config is None or method == "full":
        return None
    if type(config) not in _CONFIG_METHODS:
        raise TypeError(f"config must be a caching method's config, got {type(config).__name__}")
    method = _CONFIG_METHODS[type(config)] if method is None else method
    if _METHOD_CONFIGS.get(method) is not type(config):
        raise ValueError(f"method {method!r} does not take a {type(config).__name__}")
    if method == "fora" and config.max_order != 0:
        raise ValueError(f"FORA is TaylorSeer at max_order 0, got max_order {config.max_order}")
    return make_cache(method, config)


@dataclass
class FluxImages:
    """One batch's output and what it cost."""

    images: torch.Tensor
    """(B, 3, H, W) float32 in [-1, 1], on the CPU."""
    latents: torch.Tensor
    """(B, 16, H/8, W/8) float32 final latents (before decoding), on the CPU."""
    encode_seconds: float
    denoise_seconds: float
    decode_seconds: float
    num_full_steps: int
    num_forecast_steps: int

    @property
    def seconds(self) -> float:
        """Wall time of the whole batch: text encoding, sampling and decoding (offload transfers included)."""
        return self.encode_seconds + self.denoise_seconds + self.decode_seconds


class FluxTextToImage:
    """FLUX text-to-image on one device; ``shift`` selects FLUX.1-dev's resolution-dependent schedule."""

    def __init__(
        self, components: FluxComponents, *, shift: bool, device: str | torch.device = "cpu", offload: bool = False
    ) -> None:
        self.components = components
        self.shift = shift
        self.device = torch.device(device)
        self.offload = offload
        home = "cpu" if offload else self.device
        for module in self._modules():
            module.to(home)

    @classmethod
    def from_pretrained(
        cls,
        model_name: str = "flux-dev",
        ckpt_dir: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
        max_sequence_length: int | None = None,
    ) -> FluxTextToImage:
        """Load ``model_name``'s components from ``ckpt_dir`` and the environment (see :mod:`taylorseer_flux.weights`).
        ``max_sequence_length`` (T5 tokens) defaults to the model's (512 dev, 256 schnell)."""
        weights = find_flux_weights(model_name, ckpt_dir)
        params = transformer_params(weights.transformer, model_name)
        return cls.from_weights(
            weights,
            params,
            model_name,
            device=device,
            dtype=dtype,
            offload=offload,
            max_sequence_length=max_sequence_length,
        )

    @classmethod
    def from_weights(
        cls,
        weights: FluxWeights,
        params: FluxParams,
        model_name: str = "flux-dev",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
        max_sequence_length: int | None = None,
    ) -> FluxTextToImage:
        """Load already-resolved ``weights`` (:func:`~taylorseer_flux.weights.find_flux_weights`) with transformer
        ``params``; ``model_name`` picks the schedule and the default ``max_sequence_length`` (512 dev, 256 schnell)."""
        spec = FLUX_MODELS[model_name]
        components = load_flux_components(
            weights, params, dtype=dtype, max_sequence_length=max_sequence_length or spec.max_sequence_length
        )
        return cls(components, shift=spec.shift, device=device, offload=offload)

    def _modules(self) -> tuple[torch.nn.Module, ...]:
        c = self.components
        return (c.transformer, c.autoencoder, c.t5, c.clip)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.components.transformer.parameters()).dtype

    def _placed(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """``module`` on the device for the duration of the block; with offload, back to the CPU afterwards."""
        return on_device(module, self.device, self.offload)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts -> T5 sequence (B, L, 4096), its position ids (B, L, 3) and CLIP's pooled vector (B, 768)."""
        prompts = list(prompts)
        with self._placed(self.components.t5) as t5:
            txt = t5(prompts).to(self.device, self.dtype)
        with self._placed(self.components.clip) as clip:
            vec = clip(prompts).to(self.device, self.dtype)
        return txt, text_ids(len(prompts), txt.shape[1], device=self.device), vec

    def initial_noise(self, seeds: Sequence[int], width: int, height: int) -> torch.Tensor:
        """(B, 16, H/8, W/8) noise, image k drawn alone from ``seeds[k]`` on the device, as BFL's sampling does."""
        return torch.cat([get_noise(1, height, width, self.dtype, seed=seed, device=self.device) for seed in seeds])

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        width: int = 1024,
        height: int = 1024,
        num_steps: int = 50,
        guidance: float = 3.5,
        config: MethodConfig = None,
        progress: bool = False,
        method: str | None = None,
    ) -> FluxImages:
        """One image per (prompt, seed) pair. ``config=None`` runs the plain model; a config runs with a fresh cache
        of ``method`` (see :func:`method_cache`; TaylorSeer at interval 1 is the plain model). ``guidance`` is ignored
        by models without a guidance embedder."""
        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
        cache = method_cache(method, config)
        if width % IMAGE_MULTIPLE or height % IMAGE_MULTIPLE or width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive multiples of {IMAGE_MULTIPLE}, got {width}x{height}")
        if not math.isfinite(guidance):
            # A NaN guidance embeds NaN into every block: the images would be black, not an error.
            raise ValueError(f"guidance must be a finite number, got {guidance}")
        start = time.perf_counter()
        txt, txt_ids, vec = self.encode(prompts)
        noise = self.initial_noise(seeds, width, height)
        self._synchronize()
        encoded = time.perf_counter()

        img = pack(noise)  # (B, H/16 * W/16, 64)
        img_ids = image_ids(len(prompts), noise.shape[-2] // 2, noise.shape[-1] // 2, device=self.device)
        timesteps = get_schedule(num_steps, img.shape[1], shift=self.shift)
        with self._placed(self.components.transformer) as transformer:
            img = denoise(transformer, img, img_ids, txt, txt_ids, vec, timesteps, guidance, cache, progress=progress)
        self._synchronize()
        denoised = time.perf_counter()

        latents = unpack(img.float(), height, width)
        with self._placed(self.components.autoencoder) as autoencoder:
            images = decode_latents(autoencoder, latents)
        self._synchronize()
        decoded = time.perf_counter()
        full, forecast = (num_steps, 0) if cache is None else (cache.num_full_steps, cache.num_forecast_steps)
        return FluxImages(
            images=images.cpu(),
            latents=latents.cpu(),
            encode_seconds=encoded - start,
            denoise_seconds=denoised - encoded,
            decode_seconds=decoded - denoised,
            num_full_steps=full,
            num_forecast_steps=forecast,
        )

"""HunyuanVideo text-to-video sampling with a caching method (upstream ``hyvideo/diffusion/pipelines``), in python.

    components = load_components(find_model_files("ckpts"), "HYVideo-T/2-cfgdistill", dtype=torch.bfloat16,
                                 text_encoder_dtype=torch.float16, vae_dtype=torch.float16)
    pipe = HunyuanVideoPipeline.from_components(components, device="cuda", offload=True)
    out = pipe("A cat walks on the grass, realistic", height=480, width=640, video_length=65, seed=42,
               cache=TaylorCache(TaylorSeerConfig(interval=5, max_order=1, first_enhance=1)))
    write_video("cat.mp4", video_to_uint8_frames(out.video), fps=24)
    # any other method: cache=make_cache("teacache", TeaCacheConfig(0.15, TEACACHE_COEFFICIENTS["hunyuanvideo"]))

One call makes one video: encode the prompt (LLaVA-LLaMA-3 states + CLIP pooled vector), drop the text positions
that are padding in every prompt of the batch, draw the initial latents in float32 from a generator seeded with
``seed`` on the sampling device, run ``num_inference_steps`` Euler steps of the flow ODE (:mod:`.scheduler`), decode
with the causal 3D VAE. Upstream draws the noise in the text encoder's dtype (fp16), which rounds it; we draw it in
float32, the precision the Euler steps integrate in (diffusers does the same), so a seed gives the same noise
whatever the model dtypes. The cache is any :class:`~common.caching.CacheMethod` (``common.methods.make_cache``:
TaylorSeer, FORA, Δ-DiT, ToCa, DuCa, TeaCache); the sampler is the same for all: the cache is reset with the step count
at the start of every video and ``cache.begin_step(i)`` announces step i before the model runs; the blocks only call
the cache.

``cfg_scale`` 1 (upstream's default for the guidance-distilled release) runs a batch of 1; above 1 the latents run as
one batch [uncond, cond] with the negative prompt. ``embedded_guidance_scale`` (6.0) reaches guidance-distilled
models as ``scale * 1000``, computed in the transformer's dtype exactly as upstream does.

With ``offload=True`` (upstream ``--use-cpu-offload``) the text encoders and the VAE live on the CPU and move to the
device only while they run; the transformer stays on the device. This moves whole models (like diffusers'
``enable_model_cpu_offload``), which is faster than upstream's sequential (per-layer) offload and needs the largest
of them to fit beside the transformer for a moment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from common.caching import CacheMethod
from common.offload import on_device
from common.sequence_parallel import SequenceParallel

from .model import HunyuanVideo
from .scheduler import euler_step, flow_match_sigmas, timesteps_from_sigmas
from .text_encoders import NEGATIVE_PROMPT, ClipTextEncoder, LlamaTextEncoder, TextEmbeddings
from .vae import decode_latents
from .weights import HunyuanVideoComponents

__all__ = ["VideoOutput", "check_video_size", "latent_shape", "trim_text_padding", "HunyuanVideoPipeline"]

SIZE_MULTIPLE = 16
"""Pixel sizes must be multiples of the VAE's 8x downsampling times the transformer's 2x2 patches."""
TEMPORAL_FACTOR = 4
"""The causal VAE keeps the first frame and compresses every following 4 frames into one latent frame."""

StepCallback = Callable[[int, float, bool], None]
"""``on_step(i, timestep, is_full_step)``, called after each step's model call: TeaCache decides whether a step is
computed during that call."""


@dataclass
class VideoOutput:
    """One generated video and how it was made."""

    video: torch.Tensor
    """(3, T, H, W) float32 in [-1, 1], on the CPU (see ``common.video_io.video_to_uint8_frames``)."""
    latents: torch.Tensor
    """(C, T', H/8, W/8) float32 denoised latents, on the CPU."""
    seed: int
    seconds: float
    """Wall time of the whole call (prompt encoding, denoising, decoding, offload traffic), as upstream's
    "Success, time"."""
    denoise_seconds: float
    """Wall time of the denoising loop alone (what a caching method speeds up), without encoding and decoding."""
    num_full_steps: int
    num_forecast_steps: int


def check_video_size(height: int, width: int, video_length: int) -> None:
    """Raise a ValueError naming the fix unless sizes are positive multiples of 16 and the length is 4k + 1."""
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"video size {height}x{width} must be positive multiples of {SIZE_MULTIPLE} (8x VAE, 2x2 patches), "
            f"e.g. {max(SIZE_MULTIPLE, height // SIZE_MULTIPLE * SIZE_MULTIPLE)}x"
            f"{max(SIZE_MULTIPLE, width // SIZE_MULTIPLE * SIZE_MULTIPLE)}"
        )
    if video_length < 1 or (video_length - 1) % TEMPORAL_FACTOR:
        nearest = max(1, round((video_length - 1) / TEMPORAL_FACTOR) * TEMPORAL_FACTOR + 1)
        raise ValueError(
            f"video length {video_length} must be 4k + 1 frames (1, 5, ..., 65, ..., 129) for the causal VAE, "
            f"e.g. {nearest}"
        )


def latent_shape(height: int, width: int, video_length: int, channels: int = 16) -> tuple[int, int, int, int]:
    """(C, (L - 1) // 4 + 1, H / 8, W / 8): the latent of an L-frame H x W video."""
    check_video_size(height, width, video_length)
    return channels, (video_length - 1) // TEMPORAL_FACTOR + 1, height // 8, width // 8


def trim_text_padding(text: TextEmbeddings) -> TextEmbeddings:
    """``text`` without the trailing positions that are padding in every prompt, and without a mask when no padding
    is left (so the transformer's joint attention runs unmasked, flash-capable).

    The prompts come padded to ``text_len`` (256) tokens, but padded tokens are never attended to as keys, by the
    token refiner or the blocks, and the video tokens never see them: dropping them changes the output only by float
    rounding and saves their compute. With CFG both prompts keep the longer one's length, the shorter one its mask.
    """
    if text.mask is None:
        return text
    real = text.mask.bool()
    if bool(real.all()):
        return TextEmbeddings(text.states, None, text.pooled)
    used = real.any(dim=0).nonzero()  # positions real in some prompt
    length = int(used.max()) + 1 if len(used) else 1
    mask = text.mask[:, :length]
    return TextEmbeddings(text.states[:, :length], None if bool(real[:, :length].all()) else mask, text.pooled)


class HunyuanVideoPipeline:
    """Prompt -> video with HunyuanVideo; see the module docstring."""

    def __init__(
        self,
        transformer: HunyuanVideo,
        vae: nn.Module,
        text_encoder: LlamaTextEncoder,
        text_encoder_2: ClipTextEncoder,
        *,
        device: torch.device | str = "cpu",
        offload: bool = False,
        vae_tiling: bool = True,
        sequence_parallel: SequenceParallel | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.offload = offload
        self.vae_tiling = vae_tiling
        # Every rank of the group runs this pipeline on the same prompt and seed; only the transformer splits work.
        self.sequence_parallel = sequence_parallel
        self.transformer = transformer.to(self.device).eval()
        home = torch.device("cpu") if offload else self.device
        self.vae = vae.to(home).eval()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        text_encoder.model.to(home)
        text_encoder_2.model.to(home)
        self._last_encoded: tuple[tuple[str, ...], TextEmbeddings] | None = None

    @classmethod
    def from_components(cls, components: HunyuanVideoComponents, **kwargs) -> HunyuanVideoPipeline:
        """From :func:`~.weights.load_components`'s result; ``kwargs`` as for the constructor."""
        return cls(components.transformer, components.vae, components.text_encoder, components.text_encoder_2, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's weight dtype, in which it gets its inputs."""
        return next(self.transformer.parameters()).dtype

    # ----------------------------------------------------------------------------------------------- the stages

    def encode_prompt(self, prompts: list[str]) -> TextEmbeddings:
        """Both encoders on a batch of prompts, results on the device in the transformer's dtype.

        The last result is remembered (key: the prompts, the negative prompt included with CFG), so consecutive
        videos of one prompt, e.g. VBench's 5 seeds, run the text encoders once."""
        key = tuple(prompts)
        if self._last_encoded is not None and self._last_encoded[0] == key:
            return self._last_encoded[1]
        with on_device(self.text_encoder.model, self.device, self.offload):
            states, mask = self.text_encoder.encode(prompts, self.device)
        with on_device(self.text_encoder_2.model, self.device, self.offload):
            pooled = self.text_encoder_2.encode(prompts, self.device)
        text = TextEmbeddings(states, mask, pooled).to(self.device, self.dtype)
        self._last_encoded = (key, text)
        return text

    def prepare_latents(self, seed: int, height: int, width: int, video_length: int) -> torch.Tensor:
        """(1, C, T', H/8, W/8) float32 standard normal latents from a generator on the device seeded with ``seed``:
        the same seed gives the same video on the same kind of device (CPU and CUDA streams differ)."""
        shape = latent_shape(height, width, video_length, self.transformer.params.in_channels)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn((1, *shape), generator=generator, device=self.device, dtype=torch.float32)

    def guidance(self, batch: int, embedded_guidance_scale: float | None) -> torch.Tensor | None:
        """(batch,) ``scale * 1000`` in the transformer's dtype for guidance-distilled models, else None. A value
        that is not finite in that dtype (fp16 ends at 65504) is a ValueError: it would make every frame NaN."""
        if embedded_guidance_scale is None or not self.transformer.params.guidance_embed:
            return None
        scale = torch.full((batch,), embedded_guidance_scale, dtype=torch.float32, device=self.device)
        guidance = scale.to(self.dtype) * 1000.0
        if not bool(torch.isfinite(guidance).all()):
            raise ValueError(
                f"embedded_guidance_scale {embedded_guidance_scale} x 1000 is not finite in the transformer's "
                f"{str(self.dtype).removeprefix('torch.')}: use a smaller scale or a wider dtype (bf16, fp32)"
            )
        return guidance

    def velocity(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: TextEmbeddings,
        guidance: torch.Tensor | None,
        cfg_scale: float,
        cache: CacheMethod | None,
    ) -> torch.Tensor:
        """The guided velocity (1, C, T', H', W') in float32 at one step: the pipeline's only transformer call.

        With ``cfg_scale > 1`` the latents run as the batch [uncond, cond] in ONE forward, so one cache state
        serves both halves: each cached feature is recorded and forecast for the whole batch at once, and the
        schedule advances once per step. (Separately-run branches would each need their own cache.)
        """
        batch = text.states.shape[0]
        x = latents.expand(batch, *latents.shape[1:]).to(self.dtype)  # (B, C, T', H', W'), B = 2 with CFG
        t = timestep.expand(batch)  # (B,) float32 in [0, 1000]
        prediction = self.transformer(
            x, t, text.states, text.mask, text.pooled, guidance, cache=cache, sequence_parallel=self.sequence_parallel
        ).float()
        if cfg_scale > 1.0:
            uncond, cond = prediction.chunk(2)
            return uncond + cfg_scale * (cond - uncond)
        return prediction

    def denoise(
        self,
        latents: torch.Tensor,
        text: TextEmbeddings,
        sigmas: torch.Tensor,
        *,
        embedded_guidance_scale: float | None = 6.0,
        cfg_scale: float = 1.0,
        cache: CacheMethod | None = None,
        progress: bool = False,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Euler integration from ``sigmas[0]`` to ``sigmas[-1]``; the cache (if any) is reset with the number of
        steps first and told each step. Returns the float32 latents."""
        if cfg_scale > 1.0 and text.states.shape[0] != 2:
            raise ValueError("cfg_scale > 1 needs the text embeddings of the batch [uncond, cond]")
        timesteps = timesteps_from_sigmas(sigmas).to(self.device)
        guidance = self.guidance(text.states.shape[0], embedded_guidance_scale)
        if cache is not None:
            cache.reset(len(timesteps))
        for i in tqdm(range(len(timesteps)), desc="denoising", disable=not progress):
            if cache is not None:
                cache.begin_step(i)
            v = self.velocity(latents, timesteps[i], text, guidance, cfg_scale, cache)
            latents = euler_step(latents, v, sigmas[i], sigmas[i + 1])
            if on_step is not None:
                on_step(i, float(timesteps[i]), True if cache is None else cache.is_full_step)
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T', H', W') latents -> (B, 3, T, H, W) float32 video in [-1, 1], on the CPU."""
        with on_device(self.vae, self.device, self.offload):
            return decode_latents(self.vae, latents, tiling=self.vae_tiling).cpu()

    def _synchronize(self) -> None:
        """Wait for the GPU's queued work, so that a wall-clock reading covers what ran before it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -------------------------------------------------------------------------------------------------- one call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        *,
        height: int = 720,
        width: int = 1280,
        video_length: int = 129,
        num_inference_steps: int = 50,
        seed: int = 42,
        flow_shift: float = 7.0,
        flow_reverse: bool = True,
        embedded_guidance_scale: float | None = 6.0,
        cfg_scale: float = 1.0,
        negative_prompt: str | None = None,
        cache: CacheMethod | None = None,
        progress: bool = False,
        on_step: StepCallback | None = None,
    ) -> VideoOutput:
        """One ``video_length``-frame ``height`` x ``width`` video of ``prompt``; see the module docstring.

        ``negative_prompt`` is used only with ``cfg_scale > 1``; None or "" means upstream's default negative prompt.
        """
        check_video_size(height, width, video_length)
        if not math.isfinite(cfg_scale) or cfg_scale < 1.0:
            raise ValueError(f"cfg_scale must be finite and >= 1 (1 = no classifier-free guidance), got {cfg_scale}")
        if embedded_guidance_scale is not None and not math.isfinite(embedded_guidance_scale):
            raise ValueError(f"embedded_guidance_scale must be finite (or None), got {embedded_guidance_scale}")
        if not math.isfinite(flow_shift):
            raise ValueError(f"flow_shift must be finite and > 0, got {flow_shift}")
        start = time.perf_counter()
        prompts = [prompt.strip()]
        if cfg_scale > 1.0:
            prompts = [(negative_prompt or NEGATIVE_PROMPT).strip(), *prompts]
        text = trim_text_padding(self.encode_prompt(prompts))
        latents = self.prepare_latents(seed, height, width, video_length)
        sigmas = flow_match_sigmas(num_inference_steps, flow_shift, flow_reverse)
        self._synchronize()  # the encoders' queued GPU work is not the loop's
        denoise_start = time.perf_counter()
        latents = self.denoise(
            latents,
            text,
            sigmas,
            embedded_guidance_scale=embedded_guidance_scale,
            cfg_scale=cfg_scale,
            cache=cache,
            progress=progress,
            on_step=on_step,
        )
        self._synchronize()
        denoise_seconds = time.perf_counter() - denoise_start
        video = self.decode(latents)
        self._synchronize()
        seconds = time.perf_counter() - start
        full = num_inference_steps if cache is None else cache.num_full_steps
        return VideoOutput(
            video=video[0],
            latents=latents[0].cpu(),
            seed=seed,
            seconds=seconds,
            denoise_seconds=denoise_seconds,
            num_full_steps=full,
            num_forecast_steps=num_inference_steps - full,
        )

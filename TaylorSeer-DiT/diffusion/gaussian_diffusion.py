"""Gaussian diffusion (DDPM ancestral and DDIM sampling, hybrid training loss).

Numerically equivalent to the ``GaussianDiffusion`` of guided-diffusion / improved-diffusion as used by DiT:
all schedule quantities are precomputed once in float64 numpy and cast to float32 only when indexed, so that
pretrained checkpoints sample exactly as they do upstream.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .diffusion_utils import discretized_gaussian_log_likelihood, mean_flat, normal_kl

ModelFn = Callable[..., Any]
"""``model(x, t, **model_kwargs)`` returning a tensor, or ``(tensor, extra)``."""

StepHook = Callable[[int], None]

Generators = torch.Generator | Sequence[torch.Generator] | None
"""Source of a loop's random draws: one generator for the whole batch, one per batch row, or None (global RNG)."""


class ModelMeanType(enum.Enum):
    """What the network predicts for the mean."""

    START_X = enum.auto()
    EPSILON = enum.auto()


class ModelVarType(enum.Enum):
    """How the reverse-process variance is obtained.

    LEARNED_RANGE lets the model interpolate, in log space, between the two fixed choices
    FIXED_SMALL (the true posterior variance) and FIXED_LARGE (beta_t).
    """

    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()
    RESCALED_MSE = enum.auto()  # MSE plus a variational-bound term scaled to match RESCALED_KL
    KL = enum.auto()
    RESCALED_KL = enum.auto()  # KL scaled by num_timesteps to estimate the full variational bound

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape: Sequence[int]) -> torch.Tensor:
    """Gather ``arr[timesteps]`` as float32 on the timesteps' device, broadcast to ``broadcast_shape``.

    Indexing happens in float64 before the cast, as upstream, so values match bit for bit.
    """
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while res.ndim < len(broadcast_shape):
        res = res[..., None]
    return res + torch.zeros(broadcast_shape, device=timesteps.device)


def _randn(
    shape: Sequence[int], generator: Generators, device: torch.device | str, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row ``i`` comes from ``generator[i]`` alone.

    Each row is drawn on its generator's own device and then moved to ``device`` (as diffusers' ``randn_tensor``), so a
    row's noise is the same whatever else is in the batch: what it would be if its sample were drawn on its own.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per batch row")
    rows = [torch.randn(*shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
    return torch.stack(rows).to(device)


def _randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(x)
    return _randn(x.shape, generator, x.device, x.dtype)


def _nonzero_mask(t: torch.Tensor, ndim: int) -> torch.Tensor:
    # No noise is added when sampling the final step t == 0.
    return (t != 0).float().view(-1, *([1] * (ndim - 1)))


def _resolve_device(model: ModelFn, noise: torch.Tensor | None, device: torch.device | str | None) -> torch.device:
    """Pick the sampling device: explicit, else the model's (or a bound method's owner's), else the noise's."""
    if device is not None:
        return torch.device(device)
    for owner in (model, getattr(model, "__self__", None)):
        parameters = getattr(owner, "parameters", None)
        if callable(parameters):
            first = next(iter(parameters()), None)
            if first is not None:
                return first.device
    if noise is not None:
        return noise.device
    return torch.device("cpu")


class GaussianDiffusion:
    """Utilities for training and sampling a diffusion model with a given beta schedule.

    Timesteps ``t`` are integer tensors of shape (batch,) indexing this object's own schedule.
    """

    def __init__(
        self,
        *,
        betas: np.ndarray,
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
    ) -> None:
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type

        self.betas = betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1:
            raise ValueError("betas must be 1-D")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.num_timesteps = int(betas.shape[0])
        self._init_marginals(betas)
        self._init_posterior(betas)

    def _init_marginals(self, betas: np.ndarray) -> None:
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

    def _init_posterior(self, betas: np.ndarray) -> None:
        alphas = 1.0 - betas
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # posterior_variance[0] is 0, so its log is replaced by the next value to stay finite.
        self.posterior_log_variance_clipped = (
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            if self.num_timesteps > 1
            else np.array([])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # Forward process.

    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError("noise must have the shape of x_start")
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        if x_start.shape != x_t.shape:
            raise ValueError("x_start and x_t must have the same shape")
        posterior_mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        posterior_variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        posterior_log_variance_clipped = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return posterior_mean, posterior_variance, posterior_log_variance_clipped

    # Reverse process.

    def _fixed_variance(self) -> tuple[np.ndarray, np.ndarray]:
        if self.model_var_type == ModelVarType.FIXED_SMALL:
            return self.posterior_variance, self.posterior_log_variance_clipped
        # FIXED_LARGE uses beta_t, except at t=0 where the posterior variance gives a better decoder likelihood.
        large = np.append(self.posterior_variance[1], self.betas[1:])
        return large, np.log(large)

    def _model_variance(
        self, model_var_values: torch.Tensor | None, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model_var_type == ModelVarType.LEARNED:
            return torch.exp(model_var_values), model_var_values
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
            # The model outputs v in [-1, 1]; map it to an interpolation weight in [0, 1].
            frac = (model_var_values + 1) / 2
            model_log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(model_log_variance), model_log_variance
        variance, log_variance = self._fixed_variance()
        return _extract_into_tensor(variance, t, x.shape), _extract_into_tensor(log_variance, t, x.shape)

    def _split_model_output(
        self, model_output: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.model_var_type not in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            return model_output, None
        batch, channels = x.shape[:2]
        if model_output.shape != (batch, channels * 2, *x.shape[2:]):
            raise ValueError(f"learned-variance model must output {channels * 2} channels, got {model_output.shape}")
        mean_output, var_values = torch.split(model_output, channels, dim=1)
        return mean_output, var_values

    def p_mean_variance(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Apply the model to get p(x_{t-1} | x_t) and the implied prediction of x_0.

        Returns a dict with ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` and ``extra`` (the second
        element when the model returns a tuple, else None).
        """
        if model_kwargs is None:
            model_kwargs = {}
        if t.shape != (x.shape[0],):
            raise ValueError("t must have shape (batch,)")
        model_output = model(x, t, **model_kwargs)
        extra = None
        if isinstance(model_output, tuple):
            model_output, extra = model_output
        model_output, model_var_values = self._split_model_output(model_output, x)
        model_variance, model_log_variance = self._model_variance(model_var_values, x, t)

        if self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = model_output
        else:
            pred_xstart = self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
            "extra": extra,
        }

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def condition_mean(
        self,
        cond_fn: ModelFn,
        p_mean_var: dict[str, Any],
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Shift the mean by variance * grad log p(y | x) (classifier guidance, Dhariwal & Nichol 2021)."""
        gradient = cond_fn(x, t, **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(
        self,
        cond_fn: ModelFn,
        p_mean_var: dict[str, Any],
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Guide through the score (epsilon) instead of the mean, which is the form DDIM needs."""
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, t, **(model_kwargs or {}))
        out = p_mean_var.copy()
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(x_start=out["pred_xstart"], x_t=x, t=t)
        return out

    # DDPM ancestral sampling.

    def p_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        *,
        generator: Generators = None,
    ) -> dict[str, torch.Tensor]:
        """Sample x_{t-1} from the model at step t; returns ``sample`` and ``pred_xstart``."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        # Drawn after the model call, as upstream, so the global RNG stream matches it.
        noise = _randn_like(x, generator)
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        sample = out["mean"] + _nonzero_mask(t, x.ndim) * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        *,
        generator: Generators = None,
        on_step_begin: StepHook | None = None,
    ) -> torch.Tensor:
        """Run DDPM ancestral sampling from x_T to x_0 and return the final sample.

        See ``p_sample_loop_progressive`` for the arguments.
        """
        final = None
        for out in self.p_sample_loop_progressive(
            model,
            shape,
            noise=noise,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
            generator=generator,
            on_step_begin=on_step_begin,
        ):
            final = out
        return final["sample"]

    def p_sample_loop_progressive(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        *,
        generator: Generators = None,
        on_step_begin: StepHook | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the ``p_sample`` output of every DDPM step, noisiest first.

        Args:
            model: any callable ``model(x, t, **model_kwargs)``; ``model_kwargs`` is passed through untouched.
            shape: shape of the sample batch.
            noise: initial x_T; drawn from ``generator`` (or the global RNG) when None.
            clip_denoised: clamp predicted x_0 to [-1, 1] (pass False for latent diffusion).
            denoised_fn: optional transform applied to predicted x_0 before clipping.
            cond_fn: optional classifier-guidance gradient ``cond_fn(x, t, **model_kwargs)``.
            device: sampling device; defaults to the model's parameters' device, then the noise's, then CPU.
            progress: show a tqdm progress bar over the steps.
            generator: source of every random draw in the loop: one generator on ``device`` for the whole batch, or
                a list of one generator per batch row (on any device; row ``i`` draws from ``generator[i]`` only and
                is moved to ``device``), which makes every sample independent of the batch it is drawn in; None uses
                the global RNG.
            on_step_begin: generic hook called as ``on_step_begin(step)`` at the start of each sampler step,
                before the model call, where ``step`` counts 0..num_timesteps-1 in sampling order. Samplers use it
                to tell stateful models which step comes next.
        """

        def step(img: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.p_sample(
                model,
                img,
                t,
                clip_denoised=clip_denoised,
                denoised_fn=denoised_fn,
                cond_fn=cond_fn,
                model_kwargs=model_kwargs,
                generator=generator,
            )

        yield from self._sample_loop_progressive(
            step, model, shape, noise, device, progress, generator=generator, on_step_begin=on_step_begin
        )

    def _sample_loop_progressive(
        self,
        step: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None,
        device: torch.device | str | None,
        progress: bool,
        *,
        generator: Generators,
        on_step_begin: StepHook | None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        if not isinstance(shape, (tuple, list, torch.Size)):
            raise TypeError("shape must be a tuple or list")
        device = _resolve_device(model, noise, device)
        img = noise if noise is not None else _randn(shape, generator, device)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices)
        for step_index, i in enumerate(indices):
            if on_step_begin is not None:
                on_step_begin(step_index)
            t = torch.tensor([i] * shape[0], device=device)
            with torch.no_grad():
                out = step(img, t)
            yield out
            img = out["sample"]

    # DDIM sampling.

    def ddim_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        eta: float = 0.0,
        *,
        generator: Generators = None,
    ) -> dict[str, torch.Tensor]:
        """Sample x_{t-1} with DDIM (eta=0 is deterministic, eta=1 matches DDPM's variance)."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        # Re-derive eps from the (possibly clipped) x_0 prediction so the two stay consistent.
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        # Drawn even when eta == 0 (where it is multiplied by zero and leaves the sample unchanged) so that the
        # global RNG advances exactly as upstream and later draws by the caller, e.g. the next batch's x_T, match.
        noise = _randn_like(x, generator)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        sample = mean_pred + _nonzero_mask(t, x.ndim) * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
        *,
        generator: Generators = None,
        on_step_begin: StepHook | None = None,
    ) -> torch.Tensor:
        """Run DDIM sampling from x_T to x_0 and return the final sample.

        See ``p_sample_loop_progressive`` for the arguments; ``eta`` scales the per-step noise.
        """
        final = None
        for out in self.ddim_sample_loop_progressive(
            model,
            shape,
            noise=noise,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
            eta=eta,
            generator=generator,
            on_step_begin=on_step_begin,
        ):
            final = out
        return final["sample"]

    def ddim_sample_loop_progressive(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
        *,
        generator: Generators = None,
        on_step_begin: StepHook | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the ``ddim_sample`` output of every DDIM step, noisiest first.

        Arguments as ``p_sample_loop_progressive``, including the ``on_step_begin(step)`` hook.
        """

        def step(img: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.ddim_sample(
                model,
                img,
                t,
                clip_denoised=clip_denoised,
                denoised_fn=denoised_fn,
                cond_fn=cond_fn,
                model_kwargs=model_kwargs,
                eta=eta,
                generator=generator,
            )

        yield from self._sample_loop_progressive(
            step, model, shape, noise, device, progress, generator=generator, on_step_begin=on_step_begin
        )

    # Training.

    def _vb_terms_bpd(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Variational-bound term for step t in bits per dimension: KL to the true posterior, or at t == 0 the
        discretised decoder negative log-likelihood."""
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        output = torch.where((t == 0), decoder_nll, kl)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def training_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample training losses at timesteps t.

        Returns a dict with ``loss`` and, for MSE losses, ``mse`` and (with learned variance) ``vb``.
        """
        if model_kwargs is None:
            model_kwargs = {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        if self.loss_type.is_vb():
            return self._kl_losses(model, x_start, x_t, t, model_kwargs)
        if self.loss_type in (LossType.MSE, LossType.RESCALED_MSE):
            return self._mse_losses(model, x_start, x_t, t, noise, model_kwargs)
        raise ValueError(f"unknown loss type: {self.loss_type}")

    def _kl_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any],
    ) -> dict[str, torch.Tensor]:
        loss = self._vb_terms_bpd(
            model=model, x_start=x_start, x_t=x_t, t=t, clip_denoised=False, model_kwargs=model_kwargs
        )["output"]
        if self.loss_type == LossType.RESCALED_KL:
            loss = loss * self.num_timesteps
        return {"loss": loss}

    def _mse_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: dict[str, Any],
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        model_output = model(x_t, t, **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            model_output, model_var_values = self._split_model_output(model_output, x_t)
            # The vb term trains only the variance: the mean is detached so it is learned by the MSE alone.
            frozen_out = torch.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(
                model=lambda *args, r=frozen_out: r, x_start=x_start, x_t=x_t, t=t, clip_denoised=False
            )["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # The MSE term is independent of the step count, so scale vb as RESCALED_KL would per 1000 steps.
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target = noise if self.model_mean_type == ModelMeanType.EPSILON else x_start
        if model_output.shape != target.shape:
            raise ValueError(f"model output {model_output.shape} does not match target {target.shape}")
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

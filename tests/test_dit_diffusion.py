"""Numerical tests of the DiT Gaussian diffusion package (schedules, respacing, samplers, losses)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taylorseer_dit.diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    SpacedDiffusion,
    create_diffusion,
    get_named_beta_schedule,
    space_timesteps,
)
from taylorseer_dit.diffusion.diffusion_utils import discretized_gaussian_log_likelihood, normal_kl

SHAPE = (2, 3, 4, 4)


def _x0() -> torch.Tensor:
    return torch.linspace(-0.9, 0.8, math.prod(SHAPE)).reshape(SHAPE)


class OracleModel:
    """Returns the exact epsilon for data concentrated at the single point ``x0``.

    ``t`` is the ORIGINAL timestep, so the base (1000-step) alphas_cumprod are the right ones to use.
    """

    def __init__(self, x0: torch.Tensor, learn_sigma: bool, var_value: float = 0.0) -> None:
        self.x0 = x0
        self.learn_sigma = learn_sigma
        self.var_value = var_value
        self.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - get_named_beta_schedule("linear", 1000)))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = ((x.double() - ab.sqrt() * self.x0.double()) / (1 - ab).sqrt()).float()
        if not self.learn_sigma:
            return eps
        return torch.cat([eps, torch.full_like(eps, self.var_value)], dim=1)


# Schedules and respacing.


def test_space_timesteps_single_section_fractional_stride():
    steps = sorted(space_timesteps(1000, "50"))
    # stride 999/49 = 20.3878: round(0), round(20.39), round(40.78), round(61.16), round(81.55), round(101.94)
    assert len(steps) == 50
    assert steps[:6] == [0, 20, 41, 61, 82, 102]
    assert steps[-3:] == [958, 979, 999]


def test_space_timesteps_ddim_and_sections():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim250") == set(range(0, 1000, 4))
    # Two sections of 500: 10 steps with stride 499/9 = 55.44, then 20 steps from 500 with stride 499/19 = 26.26.
    steps = sorted(space_timesteps(1000, "10,20"))
    assert steps[:10] == [0, 55, 111, 166, 222, 277, 333, 388, 444, 499]
    assert steps[10:15] == [500, 526, 553, 579, 605]
    assert steps[-2:] == [973, 999]
    assert len(steps) == 30
    assert space_timesteps(1000, [1000]) == set(range(1000))
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim700")  # strides 1 and 2 give 1000 and 500 steps


def test_linear_betas():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64
    assert betas.shape == (1000,)
    assert betas[0] == 1e-4
    assert betas[-1] == pytest.approx(0.02, abs=1e-15)
    # 1000-step scaling: 100 steps span [1e-3, 0.2].
    short = get_named_beta_schedule("linear", 100)
    assert short[0] == pytest.approx(1e-3, abs=1e-15)
    assert short[-1] == pytest.approx(0.2, abs=1e-15)


def test_cosine_betas():
    betas = get_named_beta_schedule("squaredcos_cap_v2", 1000)
    ab = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    assert betas.dtype == np.float64
    assert betas[0] == pytest.approx(1 - ab(0.001) / ab(0.0), rel=1e-12)
    assert betas[-1] == 0.999  # capped: alpha_bar(1) is 0


def test_respaced_alphas_cumprod_match_base():
    base = create_diffusion("")
    spaced = create_diffusion("50")
    used = sorted(space_timesteps(1000, "50"))
    assert isinstance(spaced, SpacedDiffusion)
    assert spaced.num_timesteps == 50
    assert spaced.timestep_map == used
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[used], rtol=0, atol=1e-12)
    assert base.num_timesteps == 1000
    assert base.alphas_cumprod[-1] == pytest.approx(4.035829765375676e-05, rel=1e-12)


def test_create_diffusion_types():
    d = create_diffusion("ddim10")
    assert d.model_mean_type == ModelMeanType.EPSILON
    assert d.model_var_type == ModelVarType.LEARNED_RANGE
    assert d.loss_type == LossType.MSE
    d = create_diffusion(None, learn_sigma=False, sigma_small=True, predict_xstart=True, rescale_learned_sigmas=True)
    assert (d.model_mean_type, d.model_var_type, d.loss_type) == (
        ModelMeanType.START_X,
        ModelVarType.FIXED_SMALL,
        LossType.RESCALED_MSE,
    )
    assert create_diffusion("", learn_sigma=False, use_kl=True).loss_type == LossType.RESCALED_KL
    assert create_diffusion("", learn_sigma=False).model_var_type == ModelVarType.FIXED_LARGE


# Model wrapping and the step hook.


def test_wrapped_model_receives_original_timesteps():
    diffusion = create_diffusion("10")
    seen: list[list[int]] = []

    def model(x, t, **kwargs):
        seen.append(t.tolist())
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    diffusion.p_sample_loop(model, SHAPE, clip_denoised=False, generator=torch.Generator().manual_seed(0))
    expected = sorted(space_timesteps(1000, "10"), reverse=True)
    assert [ts[0] for ts in seen] == expected
    assert all(ts == [ts[0]] * SHAPE[0] for ts in seen)
    assert expected[:2] == [999, 888]


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_on_step_begin_order(loop):
    diffusion = create_diffusion("ddim8")
    events: list[tuple[str, int]] = []
    marker = object()

    def model(x, t, token=None):
        assert token is marker  # model_kwargs pass through untouched
        events.append(("model", int(t[0])))
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    getattr(diffusion, loop)(
        model,
        SHAPE,
        clip_denoised=False,
        model_kwargs={"token": marker},
        on_step_begin=lambda step: events.append(("step", step)),
    )
    timesteps = list(range(875, -1, -125))
    expected = [e for i, t in enumerate(timesteps) for e in (("step", i), ("model", t))]
    assert events == expected


# Samplers.


def test_ddim_oracle_recovers_x0():
    x0 = _x0()
    diffusion = create_diffusion("ddim50")
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sample = diffusion.ddim_sample_loop(OracleModel(x0, learn_sigma=True), SHAPE, noise=noise, clip_denoised=False)
    assert (sample - x0).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("learn_sigma", "sigma_small", "var_value"),
    [(False, False, 0.0), (False, True, 0.0), (True, False, 1.0), (True, False, -0.3)],
)
def test_ddpm_oracle_recovers_x0(learn_sigma, sigma_small, var_value):
    x0 = _x0()
    diffusion = create_diffusion("25", learn_sigma=learn_sigma, sigma_small=sigma_small)
    model = OracleModel(x0, learn_sigma=learn_sigma, var_value=var_value)
    sample = diffusion.p_sample_loop(
        model, SHAPE, clip_denoised=False, generator=torch.Generator().manual_seed(2), progress=False
    )
    # The last step (t=0) has posterior_mean_coef1 == 1, coef2 == 0 and no noise, so it lands on x0.
    assert (sample - x0).abs().max().item() < 1e-5


def test_learned_range_interpolates_log_variance():
    diffusion = create_diffusion("50")
    x = torch.zeros(SHAPE)
    t = torch.tensor([10, 49])
    out_by_v = {}
    for v in (1.0, -1.0, 0.0):
        model = lambda x_, t_, v=v: torch.cat([torch.zeros_like(x_), torch.full_like(x_, v)], dim=1)
        out_by_v[v] = diffusion.p_mean_variance(model, x, t, clip_denoised=False)["log_variance"]
    for row, ti in enumerate(t.tolist()):
        log_beta = math.log(diffusion.betas[ti])
        log_post = diffusion.posterior_log_variance_clipped[ti]
        torch.testing.assert_close(out_by_v[1.0][row], torch.full(SHAPE[1:], log_beta), rtol=0, atol=1e-6)
        torch.testing.assert_close(out_by_v[-1.0][row], torch.full(SHAPE[1:], log_post), rtol=0, atol=1e-6)
        torch.testing.assert_close(
            out_by_v[0.0][row], torch.full(SHAPE[1:], 0.5 * (log_beta + log_post)), rtol=0, atol=1e-6
        )
    # Spaced step 49 is original step 999, whose respaced beta is 1 - ab[999]/ab[979].
    base_ab = create_diffusion("").alphas_cumprod
    assert diffusion.betas[49] == pytest.approx(1 - base_ab[999] / base_ab[979], rel=1e-12)
    # At t=0 the clipped posterior log-variance borrows the t=1 value.
    assert diffusion.posterior_log_variance_clipped[0] == diffusion.posterior_log_variance_clipped[1]


def test_generator_determinism():
    diffusion = create_diffusion("10")

    def model(x, t):
        # Not an oracle: the final sample must keep depending on the noise.
        return torch.cat([0.5 * x, torch.zeros_like(x)], dim=1)

    def run(loop, seed, **kwargs):
        return getattr(diffusion, loop)(
            model, SHAPE, clip_denoised=False, generator=torch.Generator().manual_seed(seed), **kwargs
        )

    for loop, kwargs in (("p_sample_loop", {}), ("ddim_sample_loop", {"eta": 1.0})):
        a, b, c = run(loop, 3, **kwargs), run(loop, 3, **kwargs), run(loop, 4, **kwargs)
        assert torch.equal(a, b)
        assert (a - c).abs().max().item() > 1e-3
    # The first yielded DDPM step already depends on the seed, through the initial noise.
    firsts = [
        next(diffusion.p_sample_loop_progressive(model, SHAPE, generator=torch.Generator().manual_seed(seed)))
        for seed in (5, 5, 6)
    ]
    assert torch.equal(firsts[0]["sample"], firsts[1]["sample"])
    assert not torch.equal(firsts[0]["sample"], firsts[2]["sample"])


@pytest.mark.parametrize(("loop", "kwargs"), [("p_sample_loop", {}), ("ddim_sample_loop", {"eta": 1.0})])
def test_generator_per_row_matches_sampling_each_row_alone(loop, kwargs):
    diffusion = create_diffusion("10")

    def model(x, t):
        return torch.cat([0.5 * x, torch.zeros_like(x)], dim=1)

    def run(shape, generator):
        return getattr(diffusion, loop)(model, shape, clip_denoised=False, generator=generator, **kwargs)

    seeds = [11, 12, 13]
    batch = run((len(seeds), *SHAPE[1:]), [torch.Generator().manual_seed(seed) for seed in seeds])
    for row, seed in enumerate(seeds):
        alone = run((1, *SHAPE[1:]), torch.Generator().manual_seed(seed))
        assert torch.equal(batch[row : row + 1], alone)
    assert not torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="one per batch row"):
        run((2, *SHAPE[1:]), [torch.Generator().manual_seed(0)])


def test_global_rng_matches_explicit_noise():
    diffusion = create_diffusion("10")
    model = OracleModel(_x0(), learn_sigma=True)
    torch.manual_seed(7)
    a = diffusion.ddim_sample_loop(model, SHAPE, clip_denoised=False)
    torch.manual_seed(7)
    noise = torch.randn(*SHAPE)
    b = diffusion.ddim_sample_loop(model, SHAPE, noise=noise, clip_denoised=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# Training losses.


def _learned_sigma_output() -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    eps = torch.randn(SHAPE, generator=gen)
    var = torch.rand(SHAPE, generator=gen) * 2 - 1
    return torch.cat([eps, var], dim=1).requires_grad_(True)


@pytest.mark.parametrize(("respacing", "rescale", "factor"), [("", False, 1.0), ("50", True, 0.05)])
def test_training_losses_learned_sigma(respacing, rescale, factor):
    diffusion = create_diffusion(respacing, rescale_learned_sigmas=rescale)
    x0 = _x0()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(12))
    t = torch.tensor([0, diffusion.num_timesteps // 2])
    out = _learned_sigma_output()
    terms = diffusion.training_losses(lambda x, t_, **kw: out, x0, t, noise=noise)

    eps_pred = out[:, : SHAPE[1]].detach()
    expected_mse = ((noise - eps_pred) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["mse"], expected_mse, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"], rtol=0, atol=0)

    # vb equals the scaled variational-bound term computed with the same frozen output.
    x_t = diffusion.q_sample(x0, t, noise=noise)
    raw_vb = diffusion._vb_terms_bpd(lambda *a: out.detach(), x0, x_t, t, clip_denoised=False)["output"]
    torch.testing.assert_close(terms["vb"].detach(), raw_vb * factor, rtol=1e-6, atol=0)

    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert grad[:, : SHAPE[1]].abs().max().item() == 0.0  # mean frozen
    assert bool((grad[:, SHAPE[1] :] != 0).all())  # variance channels are trained by vb


def test_vb_term_at_t_positive_is_kl_in_bits():
    diffusion = create_diffusion("")
    x0 = _x0()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(13))
    t = torch.tensor([300, 700])
    x_t = diffusion.q_sample(x0, t, noise=noise)
    out = _learned_sigma_output().detach()
    vb = diffusion._vb_terms_bpd(lambda *a: out, x0, x_t, t, clip_denoised=False)["output"]

    # By hand, in float64: true posterior vs. model (eps -> x0 -> mean, learned-range log-variance).
    ti = t.numpy()
    bshape = (-1, 1, 1, 1)
    ab = torch.from_numpy(diffusion.alphas_cumprod[ti]).view(bshape)
    ab_prev = torch.from_numpy(diffusion.alphas_cumprod_prev[ti]).view(bshape)
    beta = torch.from_numpy(diffusion.betas[ti]).view(bshape)
    xt, x0d, eps = x_t.double(), x0.double(), out[:, :3].double()
    pred_x0 = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
    coef1 = beta * ab_prev.sqrt() / (1 - ab)
    coef2 = (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
    post_var = beta * (1 - ab_prev) / (1 - ab)
    frac = (out[:, 3:].double() + 1) / 2
    model_logvar = frac * beta.log() + (1 - frac) * post_var.log()
    kl = 0.5 * (
        -1
        + model_logvar
        - post_var.log()
        + (post_var.log() - model_logvar).exp()
        + (coef1 * x0d + coef2 * xt - coef1 * pred_x0 - coef2 * xt) ** 2 * (-model_logvar).exp()
    )
    expected = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
    torch.testing.assert_close(vb.double(), expected, rtol=2e-3, atol=1e-6)


def test_training_losses_fixed_variance_and_kl():
    x0 = _x0()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(14))
    t = torch.tensor([5, 500])
    eps_pred = torch.zeros(SHAPE)
    mse_only = create_diffusion("", learn_sigma=False).training_losses(lambda *a: eps_pred, x0, t, noise=noise)
    assert set(mse_only) == {"mse", "loss"}
    torch.testing.assert_close(mse_only["loss"], (noise**2).mean(dim=(1, 2, 3)), rtol=1e-6, atol=0)

    kl_diffusion = create_diffusion("", learn_sigma=False, use_kl=True)
    kl_terms = kl_diffusion.training_losses(lambda *a: eps_pred, x0, t, noise=noise)
    x_t = kl_diffusion.q_sample(x0, t, noise=noise)
    raw = kl_diffusion._vb_terms_bpd(lambda *a: eps_pred, x0, x_t, t, clip_denoised=False)["output"]
    torch.testing.assert_close(kl_terms["loss"], raw * 1000, rtol=1e-6, atol=0)


def test_gaussian_helpers():
    zero = torch.zeros(3)
    torch.testing.assert_close(normal_kl(zero, zero, zero, zero), zero)
    # KL(N(1, 1) || N(0, 1)) = 1/2; KL(N(0, e) || N(0, 1)) = (e - 1 - 1)/2.
    torch.testing.assert_close(normal_kl(torch.ones(1), 0.0, 0.0, 0.0), torch.tensor([0.5]))
    torch.testing.assert_close(normal_kl(0.0, torch.ones(1), 0.0, 0.0), torch.tensor([(math.e - 2) / 2]))
    # A tight Gaussian centred on a bin puts all its mass in that bin; the edge bins absorb the tails.
    x = torch.tensor([-1.0, 0.0, 1.0])
    logp = discretized_gaussian_log_likelihood(x, means=x, log_scales=torch.full_like(x, -8.0))
    torch.testing.assert_close(logp, torch.zeros(3), rtol=0, atol=1e-6)
    wide = discretized_gaussian_log_likelihood(torch.zeros(1), means=torch.zeros(1), log_scales=torch.zeros(1))
    # Bin width 2/255 times the standard normal density at 0.
    assert wide.item() == pytest.approx(math.log(2 / 255 / math.sqrt(2 * math.pi)), abs=1e-4)


def test_gaussian_diffusion_direct_construction():
    betas = get_named_beta_schedule("linear", 1000)
    diffusion = GaussianDiffusion(
        betas=betas,
        model_mean_type=ModelMeanType.EPSILON,
        model_var_type=ModelVarType.FIXED_LARGE,
        loss_type=LossType.MSE,
    )
    np.testing.assert_array_equal(diffusion.betas, betas)
    np.testing.assert_allclose(diffusion.alphas_cumprod_prev[1:], diffusion.alphas_cumprod[:-1], rtol=0, atol=0)
    assert diffusion.alphas_cumprod_prev[0] == 1.0 and diffusion.alphas_cumprod_next[-1] == 0.0
    assert diffusion.posterior_variance[0] == 0.0
    # posterior variance at t=1: beta_1 (1 - ab_0) / (1 - ab_1)
    ab0, ab1 = 1 - betas[0], (1 - betas[0]) * (1 - betas[1])
    assert diffusion.posterior_variance[1] == pytest.approx(betas[1] * (1 - ab0) / (1 - ab1), rel=1e-12)
    t = torch.tensor([0, 999])
    x0 = torch.ones(2, 1, 1, 1)
    xt = diffusion.q_sample(x0, t, noise=torch.zeros_like(x0))
    torch.testing.assert_close(xt.flatten(), torch.tensor([math.sqrt(1 - 1e-4), math.sqrt(4.035829765375676e-05)]))

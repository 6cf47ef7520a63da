"""Every caching method on the FLUX transformer (tiny preset, random weights, CPU): the settings that compute
everything equal full compute bit for bit, every method stays close to it, Δ-DiT bypasses the single-stream stack,
TeaCache reads the first block's modulated image input, and FLOPs, counted during real runs, match hand counts and
the per-step counts on the meta device that --test-FLOPs prints."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch
from flux_testing import tiny_flux
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.caching import CacheMethod
from common.cli import add_taylorseer_args
from common.flops import count_flops
from common.methods import METHODS, add_method_args, make_cache, method_config_from_args
from common.taylor_cache import TaylorCache, TaylorSeerConfig, full_step_indices
from common.teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig
from common.toca import ToCaCache, ToCaConfig, fresh_count
from taylorseer_flux import flops
from taylorseer_flux.flops import method_flops_report, schedule_step_flops, teacache_flops, teacache_step_flops
from taylorseer_flux.model import FLUX_PRESETS, modulate, timestep_embedding
from taylorseer_flux.sampling import denoise, get_noise, get_schedule, image_ids, pack, text_ids

pytestmark = pytest.mark.usefixtures("one_thread")

# Two blocks of each kind: the stack has a front, a rear and a boundary between the two streams' blocks.
TINY = replace(FLUX_PRESETS["flux-tiny"], depth=2, depth_single_blocks=2)
HEIGHT, WIDTH, L_TXT, STEPS = 48, 64, 5, 9
L_IMG = (HEIGHT // 16) * (WIDTH // 16)  # 12 packed image tokens


@pytest.fixture(scope="module")
def model():
    return tiny_flux(TINY)


@pytest.fixture(scope="module")
def sample(model):
    """``sample(cache)``: the packed latents of a 9-step run of one image (batch 1)."""
    generator = torch.Generator().manual_seed(1)
    noise = get_noise(1, HEIGHT, WIDTH, torch.float32, seed=0)
    img = pack(noise)
    ids = image_ids(1, noise.shape[-2] // 2, noise.shape[-1] // 2)
    txt = torch.randn(1, L_TXT, TINY.context_in_dim, generator=generator)
    vec = torch.randn(1, TINY.vec_in_dim, generator=generator)
    timesteps = get_schedule(STEPS, img.shape[1])
    return lambda cache=None: denoise(model, img, ids, txt, text_ids(1, L_TXT), vec, timesteps, cache=cache)


@pytest.fixture(scope="module")
def full(sample):
    return sample(None)


def parse(*argv: str) -> tuple[str, object]:
    """The method and config of FLUX sample.py-like flags (E=1 unless given)."""
    parser = argparse.ArgumentParser()
    add_taylorseer_args(parser, interval=3, max_order=2, first_enhance=1)
    add_method_args(parser, teacache_coefficients="flux")
    args = parser.parse_args(list(argv))
    return args.method, method_config_from_args(args, parser)


def counted(run) -> int:
    """FLOPs of ``run()`` with attention as matmuls: the counter knows no CPU flash-attention kernel, while on the
    meta device (and with the math kernel) attention is q @ k^T and attn @ v, as the FLOPs convention counts it."""
    with sdpa_kernel(SDPBackend.MATH):
        return count_flops(run)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------- against full compute


def two_stacks(model, x: dict) -> torch.Tensor:
    """The forward as it was before the block stack became one run_blocks call: the double blocks on the two
    streams, then the single blocks on the joined sequence."""
    img, txt = model.img_in(x["img"]), model.txt_in(x["txt"])
    vec = model.time_in(timestep_embedding(x["timesteps"], 256))
    vec = vec + model.guidance_in(timestep_embedding(x["guidance"], 256))
    vec = vec + model.vector_in(x["y"])
    pe = model.pe_embedder(torch.cat((x["txt_ids"], x["img_ids"]), dim=1))
    for block in model.double_blocks:
        img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
    joint = torch.cat((txt, img), dim=1)
    for block in model.single_blocks:
        joint = block(joint, vec=vec, pe=pe)
    return model.final_layer(joint[:, L_TXT:], vec)


@torch.no_grad()
def test_plain_model_is_bit_identical_to_the_two_stacks_run_in_turn(model) -> None:
    """Batch 2, where the streams cut from the joined sequence are strided views that the stack makes contiguous
    again, as the blocks saw them before."""
    generator = torch.Generator().manual_seed(4)
    x = {
        "img": torch.randn(2, L_IMG, TINY.in_channels, generator=generator),
        "img_ids": image_ids(2, 3, 4),
        "txt": torch.randn(2, L_TXT, TINY.context_in_dim, generator=generator),
        "txt_ids": text_ids(2, L_TXT),
        "timesteps": torch.tensor([0.9, 0.4]),
        "y": torch.randn(2, TINY.vec_in_dim, generator=generator),
        "guidance": torch.tensor([3.5, 2.0]),
    }
    assert torch.equal(model(**x), two_stacks(model, x))


@pytest.mark.parametrize(
    ("argv", "full_steps"),
    [
        (("--method", "teacache", "--teacache-thresh", "0"), STEPS),
        # Full steps 0, 3, 6; on the cached steps every token of every layer is fresh, so everything is computed.
        (("--method", "toca", "--fresh-ratio", "1", "--no-layer-schedule"), 3),
        (("--method", "duca", "--fresh-ratio", "1", "--no-layer-schedule", "--interval", "1"), STEPS),
        (("--method", "delta-dit", "--interval", "1", "--cached-blocks", "2"), STEPS),
        (("--method", "taylorseer", "--interval", "1"), STEPS),
    ],
    ids=["teacache-0", "toca-ratio-1", "duca-interval-1", "delta-interval-1", "taylorseer-interval-1"],
)
def test_settings_that_compute_everything_equal_full_compute(argv, full_steps, sample, full) -> None:
    method, config = parse(*argv)
    cache = make_cache(method, config)
    assert torch.equal(sample(cache), full)
    if cache is not None:
        assert (cache.num_full_steps, cache.num_forecast_steps) == (full_steps, STEPS - full_steps)


def test_fora_is_taylorseer_of_order_zero_bit_for_bit(sample) -> None:
    method, config = parse("--method", "fora", "--interval", "3", "--max-order", "2")
    fora = sample(make_cache(method, config))
    assert torch.equal(fora, sample(TaylorCache(TaylorSeerConfig(interval=3, max_order=0))))
    assert not torch.equal(fora, sample(TaylorCache(TaylorSeerConfig(interval=3, max_order=2))))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_every_method_runs_and_stays_close_to_full_compute(method, sample, full) -> None:
    argv = ("--method", method, "--teacache-thresh", "0.3", "--teacache-coefficients", "identity")
    method, config = parse(*argv, "--cached-blocks", str(TINY.depth_single_blocks), "--delta-boundary", "1")
    cache = make_cache(method, config)
    out = sample(cache)
    error = relative_error(out, full)
    assert 0 < error < 0.2, (method, error)
    assert cache.num_forecast_steps > 0 and cache.num_full_steps + cache.num_forecast_steps == STEPS


# --------------------------------------------------------------------------------------------- what each one runs


def step_inputs(step: int) -> dict:
    generator = torch.Generator().manual_seed(10 + step)
    return {
        "img": torch.randn(1, L_IMG, TINY.in_channels, generator=generator),
        "img_ids": image_ids(1, 3, 4),
        "txt": torch.ones(1, L_TXT, TINY.context_in_dim),
        "txt_ids": text_ids(1, L_TXT),
        "timesteps": torch.tensor([1.0 - 0.1 * step]),
        "y": torch.ones(1, TINY.vec_in_dim),
        "guidance": torch.tensor([3.5]),
    }


@torch.no_grad()
def test_delta_dit_bypasses_the_single_stream_stack_by_its_residual(model) -> None:
    """cached_blocks = the single blocks (the reference's FLUX Δ-DiT): at a cached step the double blocks run, the
    single blocks do not, and the single stack's output is its input plus its residual at the last full step."""
    method, config = parse("--method", "delta-dit", "--cached-blocks", str(TINY.depth_single_blocks),
                           "--delta-boundary", "1")  # fmt: skip
    cache = make_cache(method, config)
    cache.reset(2)
    seen = {}
    first, last = model.single_blocks[0], model.single_blocks[-1]
    hooks = [first.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0])),
             last.register_forward_hook(lambda _m, _args, out: seen.__setitem__("out", out))]  # fmt: skip
    cache.begin_step(0)
    model(**step_inputs(0), cache=cache)
    residual = seen["out"] - seen["in"]
    seen.clear()
    cache.begin_step(1)
    ran = []
    counters = [block.register_forward_hook(lambda m, _a, _o: ran.append(m)) for block in model.modules()
                if type(block).__name__ in ("DoubleStreamBlock", "SingleStreamBlock")]  # fmt: skip
    got = model(**step_inputs(1), cache=cache)
    for hook in counters:
        hook.remove()
    assert ran == list(model.double_blocks) and not seen
    # The plain model at step 1 with the single stack replaced by its input plus the residual.
    hooks.append(last.register_forward_hook(lambda _m, _args, _out: seen["in"] + residual))
    expected = model(**step_inputs(1))
    for hook in hooks:
        hook.remove()
    assert torch.equal(got, expected)


@torch.no_grad()
def test_teacache_signal_is_the_first_blocks_modulated_image_input(model) -> None:
    """As TeaCache4FLUX: img_mod1 applied to img_norm1(img), i.e. what block 0's image qkv projection reads."""
    signals = []

    class Recording(TeaCache):
        def _decide(self, signal: torch.Tensor) -> bool:
            signals.append(signal)
            return super()._decide(signal)

    cache = Recording(TeaCacheConfig(threshold=0))
    cache.reset(1)
    qkv_inputs = []
    hook = model.double_blocks[0].img_attn.qkv.register_forward_pre_hook(lambda _m, args: qkv_inputs.append(args[0]))
    cache.begin_step(0)
    model(**step_inputs(0), cache=cache)
    hook.remove()
    assert len(signals) == 1 and torch.equal(signals[0], qkv_inputs[0])
    block, x = model.double_blocks[0], step_inputs(0)
    vec = model.time_in(timestep_embedding(x["timesteps"], 256))
    vec = vec + model.guidance_in(timestep_embedding(x["guidance"], 256)) + model.vector_in(x["y"])
    shift, scale = block.img_mod.lin(torch.nn.functional.silu(vec))[:, None].chunk(6, dim=-1)[:2]
    torch.testing.assert_close(signals[0], modulate(block.img_norm1(model.img_in(x["img"])), shift, scale))


# ---------------------------------------------------------------------------------------------------------- FLOPs

HIDDEN, MLP = TINY.hidden_size, int(TINY.hidden_size * TINY.mlp_ratio)


def test_toca_cached_steps_cost_the_fresh_tokens_of_the_double_blocks_mlps(sample) -> None:
    """Counted during the run: ToCa's cached steps cost what FORA's do (embeddings, modulations, final layer) plus
    each double block's two MLPs on their fresh tokens; the single blocks' fused output is reused whole."""
    schedule = TaylorSeerConfig(interval=3, max_order=0)  # full steps 0, 3, 6: 6 cached steps
    fora = count_flops(lambda: sample(TaylorCache(schedule)))
    toca = count_flops(lambda: sample(ToCaCache(ToCaConfig(interval=3, fresh_ratio=0.5, layer_schedule=False))))
    fresh = fresh_count(0.5, L_IMG) + fresh_count(0.5, L_TXT)
    assert fresh == 6 + 2  # round(2.5) = 2
    mlp_per_token = 2 * (2 * HIDDEN * MLP)  # two matmuls of 64 x 256
    assert toca == fora + 6 * TINY.depth * fresh * mlp_per_token


def test_teacache_costs_its_signal_on_top_of_full_compute(sample) -> None:
    baseline = count_flops(lambda: sample(None))
    teacache = count_flops(lambda: sample(TeaCache(TeaCacheConfig(threshold=0))))
    assert teacache == baseline + STEPS * 2 * HIDDEN * 6 * HIDDEN  # block 0's image modulation, once per step


DETERMINISTIC = [
    ("--method", "full"),
    ("--method", "taylorseer", "--first-enhance", "2"),
    ("--method", "fora"),
    # Rear range early, front range late: three kinds of step.
    ("--method", "delta-dit", "--cached-blocks", "3", "--delta-boundary", "0.5"),
    ("--method", "toca", "--fresh-ratio", "0.3"),
    ("--method", "toca", "--toca-score", "random", "--interval", "4"),
    ("--method", "duca", "--interval", "4", "--first-enhance", "2"),
]


@pytest.mark.parametrize("argv", DETERMINISTIC, ids=lambda argv: " ".join(argv[1:]))
def test_meta_step_counts_equal_the_flops_of_a_real_run(argv, sample) -> None:
    """What --test-FLOPs prints (each step's kind counted once on the meta device) is what a real run on CPU costs,
    step kinds and the random score (counted by norm on meta) included."""
    method, config = parse(*argv)
    real = counted(lambda: sample(make_cache(method, config)))
    report = method_flops_report(TINY, WIDTH, HEIGHT, L_TXT, STEPS, method, config)
    assert report.flops == real
    assert report.baseline_flops == counted(lambda: sample(None))
    assert report.num_full_steps + report.num_cached_steps == STEPS


@pytest.mark.parametrize("argv", [DETERMINISTIC[3], DETERMINISTIC[6]], ids=["delta-dit", "duca"])
def test_counting_each_kind_once_equals_counting_every_step(argv, monkeypatch) -> None:
    method, config = parse(*argv)
    model = flops._meta_model(TINY)
    run = flops._forward(model, 1, L_IMG, L_TXT)
    once = schedule_step_flops(run, flops._counting_cache(method, config), STEPS)
    monkeypatch.setattr(flops, "step_kinds", lambda cache, num_steps: list(range(num_steps)))
    assert schedule_step_flops(run, flops._counting_cache(method, config), STEPS) == once
    assert len(set(once)) > 1  # cached steps cost less than full ones


def test_step_kinds_by_hand() -> None:
    """DuCa E=2 N=4: F F C A C F C A C; Δ-DiT E=1 N=3, boundary 0.5 of 9 steps: F R R F R F F' F' F (R before
    step 4.5, F' after)."""
    duca = make_cache(*parse("--method", "duca", "--interval", "4", "--first-enhance", "2"))
    duca.reset(STEPS)
    assert flops.step_kinds(duca, STEPS) == ["full", "full", "toca", "aggressive", "toca", "full", "toca",
                                              "aggressive", "toca"]  # fmt: skip
    delta = make_cache(*parse("--method", "delta-dit", "--delta-boundary", "0.5"))
    delta.reset(STEPS)
    assert flops.step_kinds(delta, STEPS) == ["full", "rear", "rear", "full", "rear", "front", "full", "front",
                                              "front"]  # fmt: skip
    assert flops.step_kinds(CacheMethod(), 3) == [0, 1, 2]  # unknown: every step counted


def test_teacache_flops_of_a_run_from_its_step_counts(sample) -> None:
    """The end-of-run count of sample.py: computed steps x a computed step + skipped steps x a skipped step (each
    counted on the meta device) is what the run cost."""
    cache = TeaCache(TeaCacheConfig(threshold=0.3, coefficients=TEACACHE_COEFFICIENTS["identity"]))
    real = counted(lambda: sample(cache))
    assert 0 < cache.num_forecast_steps < STEPS - 1
    step_flops = teacache_step_flops(TINY, WIDTH, HEIGHT, L_TXT)
    assert teacache_flops(cache.num_full_steps, cache.num_forecast_steps, step_flops) == real
    with pytest.raises(ValueError, match="TeaCache's FLOPs depend on the run"):
        method_flops_report(TINY, WIDTH, HEIGHT, L_TXT, STEPS, "teacache", TeaCacheConfig())


@pytest.mark.parametrize(
    ("forecaster", "schedule"),
    [
        ("taylor", ("--full-steps", "4")),
        ("newton", ("--full-steps", "4", "--placement", "late-dense")),
        ("hermite", ("--full-steps", "4", "--placement", "late-dense", "--placement-power", "0.5")),
        ("newton", ("--placement", "list", "--full-step-list", "0,2,5,6")),
    ],
    ids=["taylor-uniform", "newton-late-dense", "hermite-late-dense", "newton-list"],
)
def test_every_forecaster_and_placement_runs(forecaster, schedule, sample, full) -> None:
    method, config = parse("--forecaster", forecaster, "--max-order", "2", *schedule)
    cache = make_cache(method, config)
    out = sample(cache)
    assert cache.num_full_steps == len(full_step_indices(STEPS, config)) == 4
    error = relative_error(out, full)
    assert 0 < error < 0.2, (forecaster, schedule, error)

"""Forecasters (taylor, newton, hermite) and full-step placements (uniform, late-dense, list): hand-computed values,
Newton's exactness on polynomials at uneven spacings, the flags, the records, and runs of the DiT sampler."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from cli_testing import assert_refused
from dit_testing import tiny_dit

from common.cli import add_taylorseer_args, full_step_list_arg
from common.flops import FlopsReport
from common.methods import add_method_args, describe, make_cache, method_config_from_args, method_record
from common.taylor_cache import (
    TaylorCache,
    TaylorSeerConfig,
    full_step_indices,
    hermite_forecast,
    hermite_polynomial,
    is_full_step,
    newton_forecast,
    placed_full_steps,
    update_divided_differences,
)
from taylorseer_dit import search_placement
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.pipeline import sample_dit
from taylorseer_dit.sample_ddp import method_suffix
from taylorseer_dit.sampling_args import add_sampler_args

pytestmark = pytest.mark.usefixtures("one_thread")


def run(cache: TaylorCache, feature, num_steps: int) -> dict[int, torch.Tensor]:
    """Drive ``cache`` over a run with one module whose output at step t is ``feature(t)``; the outputs by step."""
    cache.reset(num_steps)
    outputs = {}
    for step in range(num_steps):
        cache.begin_step(step)
        outputs[step] = cache.apply("m", lambda step=step: feature(step))
    return outputs


def polynomial(coefficients: list[float]):
    base = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    return lambda t: sum(c * t**i for i, c in enumerate(coefficients)) * base


@pytest.mark.parametrize(("order", "steps"), [(1, (0, 3, 4)), (2, (0, 1, 4, 9)), (3, (0, 2, 3, 7, 8))])
def test_newton_is_exact_on_polynomials_of_its_order_at_uneven_spacings(order, steps) -> None:
    feature = polynomial([0.3, -1.1, 0.7, 0.05][: order + 1])
    config = TaylorSeerConfig(max_order=order, forecaster="newton", placement="list", full_step_list=steps)
    outputs = run(TaylorCache(config), feature, steps[-1] + 4)
    for step in range(steps[order] + 1, steps[-1] + 4):  # every forecast once order + 1 full steps are in
        torch.testing.assert_close(outputs[step], feature(step), rtol=1e-12, atol=1e-12)
    taylor = run(TaylorCache(TaylorSeerConfig(max_order=order, placement="list", full_step_list=steps)), feature, 13)
    if order >= 2:  # the reference's is exact on lines only
        assert (taylor[steps[-1] + 3] - feature(steps[-1] + 3)).abs().max() > 1e-3


def test_divided_differences_and_newtons_polynomial_by_hand() -> None:
    # f = t^2 at t = 1, 2, 4: f[4] = 16, f[4,2] = (16 - 4) / 2 = 6, f[4,2,1] = (6 - 3) / 3 = 1.
    one = torch.ones(1, dtype=torch.float64)
    old = [4 * one, 3 * one]  # f[2] = 4, f[2,1] = 3
    new = update_divided_differences(old, [2, 1], 16 * one, 4, max_order=2)
    assert [float(d) for d in new] == [16.0, 6.0, 1.0]
    # p(t) = 16 + 6 (t - 4) + (t - 4)(t - 2): p(6) = 16 + 12 + 8 = 36.
    assert float(newton_forecast(new, [4, 2, 1], 6)) == 36.0


def test_hermite_polynomials_and_forecast_by_hand() -> None:
    assert [hermite_polynomial(n, 1.5) for n in range(4)] == [1.0, 3.0, 7.0, 2 * 1.5 * 7.0 - 4 * 3.0]
    factors = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])]
    # s = 0.5, x = 3: 1 + 2 * 0.5 * H_1(1.5) + 4 * 0.25 * H_2(1.5) / 2 = 1 + 3 + 3.5
    assert float(hermite_forecast(factors, 3, 0.5)) == 7.5


def test_hermite_forecasts_from_the_taylor_factors() -> None:
    feature = polynomial([0.2, 0.4, -0.3])
    base = {"interval": 3, "max_order": 2}
    taylor, hermite = TaylorCache(TaylorSeerConfig(**base)), TaylorCache(TaylorSeerConfig(**base, forecaster="hermite"))
    run(taylor, feature, 8)
    outputs = run(hermite, feature, 8)  # full 0, 3, 6; step 7 forecast from the factors of step 6
    factors = taylor.factors("m")
    torch.testing.assert_close(outputs[7], hermite_forecast(factors, 1, 0.5), rtol=1e-12, atol=1e-12)


PLACEMENTS = [
    # T=50, K=8, E=1, uniform: 48 * j / 7 rounded half up.
    ((50, 8, 1, 1.0), [0, 7, 14, 21, 27, 34, 41, 48]),
    # late-dense 0.7: 48 * (j / 7)^0.7 = 12.29, 19.97, 26.52, 32.44, 37.93, 43.09, 48.
    ((50, 8, 1, 0.7), [0, 12, 20, 27, 32, 38, 43, 48]),
    # E=2 keeps steps 0 and 1; the rest from step 1 to 48: 1 + 47 * j / 6 = 8.83, 16.67, 24.5, 32.33, 40.17, 48.
    ((50, 8, 2, 1.0), [0, 1, 9, 17, 25, 32, 40, 48]),
    # Rounding collides (6, 7, 7, 8, 8 for power 0.2): moved apart and back under step T - 2 = 8.
    ((10, 6, 1, 0.2), [0, 4, 5, 6, 7, 8]),
    ((10, 10, 1, 1.0), list(range(10))),
    ((10, 2, 2, 1.0), [0, 1]),
]


@pytest.mark.parametrize(("arguments", "expected"), PLACEMENTS)
def test_placements_by_hand(arguments, expected) -> None:
    assert placed_full_steps(*arguments) == expected


def test_a_list_past_the_run_and_a_budget_below_the_warm_up_are_refused() -> None:
    with pytest.raises(ValueError, match="full_steps 1 is below first_enhance 2"):
        TaylorSeerConfig(first_enhance=2, full_steps=1)
    with pytest.raises(ValueError, match="past the last step 4"):
        full_step_indices(5, TaylorSeerConfig(placement="list", full_step_list=(0, 5)))


def test_the_sampler_runs_the_placed_schedule_and_flops_follow_it() -> None:
    config = TaylorSeerConfig(max_order=2, full_steps=8, placement="late-dense")
    assert full_step_indices(50, config) == [0, 12, 20, 27, 32, 38, 43, 48]
    cache = TaylorCache(config)
    cache.reset(50)
    assert [step for step in range(50) if cache.begin_step(step)] == [0, 12, 20, 27, 32, 38, 43, 48]
    report = FlopsReport.for_schedule("reference", 10.0, 1.0, 50, config)
    assert (report.num_full_steps, report.speedup) == (8, 500.0 / (8 * 10.0 + 42 * 1.0))
    with pytest.raises(ValueError, match="needs the run's step count"):
        is_full_step(3, config)


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_taylorseer_args(parser, interval=4, max_order=2, first_enhance=2)
    add_method_args(parser)
    args = parser.parse_args(list(argv))
    return args.method, method_config_from_args(args, parser)


def test_flags_map_onto_the_config_and_records_stay_compatible(tmp_path) -> None:
    method, config = parse("--forecaster", "newton", "--full-steps", "8", "--placement", "late-dense",
                           "--placement-power", "0.6")  # fmt: skip
    assert config == TaylorSeerConfig(interval=4, max_order=2, first_enhance=2, forecaster="newton", full_steps=8,
                                      placement="late-dense", placement_power=0.6)  # fmt: skip
    assert describe(method, config) == "TaylorSeer K=8 late-dense p=0.6 O=2 newton"
    record = method_record(method, config)
    assert record["forecaster"] == "newton" and record["full_steps"] == 8 and record["placement_power"] == 0.6
    assert method_suffix(method, config) == "-N4-O2-E2-newton-K8-late-dense-p0.6"
    # The paper's settings: no new key in the record, the folder name of before.
    _, plain = parse()
    assert set(method_record("taylorseer", plain)) == {"method", "interval", "max_order", "first_enhance",
                                                        "derivative_start_step", "factor_dtype"}  # fmt: skip
    assert method_suffix("taylorseer", plain) == "-N4-O2-E2"
    # FORA on a placement: order 0 on the same schedule, the forecaster reset.
    method, fora = parse("--method", "fora", "--forecaster", "hermite", "--full-steps", "6")
    assert (fora.max_order, fora.forecaster, fora.full_steps) == (0, "taylor", 6)
    assert describe(method, fora) == "FORA K=6 uniform"
    steps = tmp_path / "placement.json"
    steps.write_text(json.dumps({"full_steps": [0, 1, 5, 9]}))
    _, listed = parse("--placement", "list", "--full-step-list", str(steps))
    assert listed.full_step_list == (0, 1, 5, 9) and full_step_list_arg("0,2,3") == (0, 2, 3)


@pytest.mark.parametrize("forecaster", ["taylor", "newton", "hermite"])
@pytest.mark.parametrize("placement", ["interval", "uniform", "late-dense", "list"])
def test_every_forecaster_and_placement_runs_in_dit(forecaster, placement) -> None:
    model = tiny_dit(depth=2)
    steps = 12
    schedule = {
        "interval": {"interval": 3},
        "uniform": {"full_steps": 5},
        "late-dense": {"full_steps": 5, "placement": "late-dense"},
        "list": {"placement": "list", "full_step_list": (0, 1, 4, 8, 10)},
    }[placement]
    config = TaylorSeerConfig(max_order=2, first_enhance=2, forecaster=forecaster, **schedule)
    diffusion = create_diffusion(str(steps))
    full = sample_dit(model, diffusion, [1, 3], cfg_scale=1.5, seed=2)
    result = sample_dit(model, diffusion, [1, 3], cfg_scale=1.5, seed=2, cache=make_cache("taylorseer", config))
    assert result.num_full_steps == len(full_step_indices(steps, config))
    error = float((result.samples - full.samples).norm() / full.samples.norm())
    assert 0 < error < 0.3 and math.isfinite(error)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """search_placement.py on the bundled model at tiny settings: (record, output path)."""
    output = tmp_path_factory.mktemp("search") / "placement.json"
    argv = ["--full-steps", "5", "--num-sampling-steps", "10", "--num-samples", "6", "--batch-size", "3",
            "--powers", "0.5", "0.55", "1.0", "--output", str(output)]  # fmt: skip
    return search_placement.cli(argv), output


def test_the_search_keeps_the_placement_of_least_error_and_samplers_read_it(searched) -> None:
    record, output = searched
    candidates = record["candidates"]
    # 0.5 and 0.55 place the same steps: measured once.
    assert [c["power"] for c in candidates] == [0.5, 1.0]
    assert [c["full_steps"] for c in candidates] == [placed_full_steps(10, 5, 2, p) for p in (0.5, 1.0)]
    best = min(candidates, key=lambda c: c["rel_l2"])
    assert (record["full_steps"], record["power"], record["rel_l2"]) == (best["full_steps"], best["power"],
                                                                        best["rel_l2"])  # fmt: skip
    assert all(0 < c["rel_l2"] < 1 for c in candidates) and record["weights_id"]
    assert json.loads(output.read_text()) == record
    _, config = parse("--placement", "list", "--full-step-list", str(output))
    assert list(config.full_step_list) == record["full_steps"]


SEARCH_BAD_INPUTS = [
    ("--full-steps", ["--full-steps", "1"], "--full-steps: expected an integer >= 2, got 1"),
    ("--first-enhance", ["--full-steps", "3", "--first-enhance", "3"], "--full-steps 3 leaves nothing to place"),
    ("--forecaster", ["--full-steps", "4", "--forecaster", "foca"], "--forecaster: invalid choice: 'foca'"),
    ("--max-order", ["--full-steps", "4", "--max-order", "-1"], "--max-order: expected an integer in 0..8"),
    ("--hermite-scale", ["--full-steps", "4", "--hermite-scale", "inf"], "--hermite-scale: expected a finite"),
    ("--powers", ["--full-steps", "4", "--powers", "nan"], "--powers: expected a finite number > 0 and <= 4"),
    ("--num-samples", ["--full-steps", "4", "--num-samples", "0"], "--num-samples: expected an integer in"),
    ("--batch-size", ["--full-steps", "4", "--batch-size", "0"], "--batch-size: expected an integer in"),
    ("--seed", ["--full-steps", "4", "--seed", "-1"], "--seed: expected an integer in"),
    ("--output", ["--full-steps", "4", "--output", "{tmp}/out.txt"], "--output"),
    ("--device", ["--full-steps", "4", "--device", "cuda:7"], "--device"),
]


@pytest.mark.parametrize(("flag", "argv", "message"), SEARCH_BAD_INPUTS, ids=[c[0] for c in SEARCH_BAD_INPUTS])
def test_search_bad_input_is_one_error_line(flag, argv, message, tmp_path, capsys) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert_refused(search_placement.cli, argv, message, capsys, watch=tmp_path)


def test_every_search_flag_has_a_bad_input_row() -> None:
    parser = search_placement.build_parser()
    own = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    sampler = argparse.ArgumentParser()
    add_sampler_args(sampler, decoder=False)
    shared = {o for a in sampler._actions for o in a.option_strings}  # covered by the samplers' bad-input tables
    assert own - shared == {flag for flag, _, _ in SEARCH_BAD_INPUTS}

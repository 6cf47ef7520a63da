"""The forecaster x placement benchmark: hand-computed errors on a toy model whose one cached feature is a polynomial
in the step (Newton exact where its polynomial interpolates, Taylor and Hermite off by what hand computation says),
full-step counts equal to the schedules', the caveat first in every output, both tiny-model scripts end to end
(their JSON rows recomputed from the scripts' own sampler) and one error line for every flag's bad value."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_testing import assert_refused

from common.caching import cached
from common.forecaster_benchmark import (
    INTERVAL,
    RESULT_FILES,
    Grid,
    Setting,
    interval_for_budget,
    relative_error,
    run_grid,
    tiny_model_caveat,
    write_results,
)
from common.taylor_cache import TaylorCache, full_step_indices
from taylorseer_flux import benchmark_forecasters as flux_benchmark
from taylorseer_hunyuanvideo import benchmark_forecasters as hunyuan_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")

EXACT = 1e-14
"""A relative error this small is exact to float64 rounding: the cache forms each forecast as one weighted sum of the
recorded outputs, whose rounding leaves ~1e-16 where the polynomial is reproduced exactly."""


def toy_run(feature: Callable[[int], torch.Tensor], num_steps: int):
    """``run(cache)`` of a "model" that is one cached module whose output at step t is ``feature(t)``; the run's
    output is every step's module output, stacked (so a forecast's error at any step shows)."""

    def run(cache: TaylorCache | None) -> torch.Tensor:
        if cache is not None:
            cache.reset(num_steps)
        outputs = []
        for step in range(num_steps):
            if cache is not None:
                cache.begin_step(step)
            outputs.append(cached(cache, "m", lambda step=step: feature(step)))
        return torch.stack(outputs)

    return run


def square(step: int) -> torch.Tensor:
    return torch.tensor([float(step * step)], dtype=torch.float64)


def quadratic(step: int) -> torch.Tensor:
    return torch.tensor([3.0 - 2.0 * step + step * step, 5.0 + step - 2.0 * step * step], dtype=torch.float64)


def linear(step: int) -> torch.Tensor:
    return torch.tensor([1.0 + 2.0 * step, -4.0 + 3.0 * step], dtype=torch.float64)


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["max_order"], r["budget"], r["forecaster"], r["placement"]): r for r in rows}


# --------------------------------------------------------------------------------------------------- the grid


def test_hand_computed_errors_on_t_squared() -> None:
    """T=5, E=3, K=4, O=2 on f(t) = t². Uniform and late-dense both run steps 0-3 and forecast step 4 from the
    full steps 1, 2, 3; the interval schedule (N=2) runs 0, 1, 2, 4 and forecasts step 3 from 0, 1, 2.
    Newton's parabola through three points of t² is t² itself: error 0. Taylor's factors at step 3 are F0 = 9,
    F1 = 9 - 4 = 5, F2 = 5 - 3 = 2, so step 4 is 9 + 5 + 2/2 = 15 (not 16); at step 2 (F0 = 4, F1 = 3, F2 = 2) step 3
    is 4 + 3 + 1 = 8 (not 9): one unit off either way. Hermite (s = 1/2, H1 = 2y, H2 = 4y² - 2 at y = s x = 1/2:
    F0 + F1 s H1 + F2 s² H2 / 2) is F0 + F1/2 - F2/8: 9 + 2.5 - 0.25 = 11.25 at step 4 and 4 + 1.5 - 0.25 = 5.25 at
    step 3. ||t²|| over steps 0-4 is √354."""
    grid = Grid(num_steps=5, budgets=(4,), orders=(2,), first_enhance=3)
    rows = by_key(run_grid(toy_run(square, 5), grid))
    norm = math.sqrt(0 + 1 + 16 + 81 + 256)
    assert len(rows) == 9
    for placement, hermite_miss in (("uniform", 16 - 11.25), ("late-dense", 16 - 11.25), (INTERVAL, 9 - 5.25)):
        assert rows[(2, 4, "newton", placement)]["rel_l2"] < EXACT
        assert rows[(2, 4, "taylor", placement)]["rel_l2"] == pytest.approx(1 / norm, rel=1e-12)
        assert rows[(2, 4, "hermite", placement)]["rel_l2"] == pytest.approx(hermite_miss / norm, rel=1e-12)
    assert rows[(2, 4, "newton", "uniform")]["full_step_list"] == [0, 1, 2, 3]
    assert rows[(2, 4, "newton", INTERVAL)]["full_step_list"] == [0, 1, 2, 4]
    assert rows[(2, 4, "newton", INTERVAL)]["interval"] == 2


def test_newton_is_exact_on_polynomials_of_its_order_and_taylor_is_not() -> None:
    """T=20, E=3 (three warm-up points, so order 2 is available from the first forecast on): on a quadratic Newton
    O=2 is exact at every budget and placement, Newton O=1 and Taylor O=2 are not; on a linear feature every order
    >= 1 of Newton and Taylor is exact."""
    grid = Grid(num_steps=20, budgets=(6, 8), orders=(1, 2), first_enhance=3)
    curved = run_grid(toy_run(quadratic, 20), grid)
    straight = by_key(run_grid(toy_run(linear, 20), grid))
    assert len(curved) == 2 * 2 * 3 * 3  # orders x budgets x forecasters x (uniform, late-dense, interval)
    for row in curved:
        key = (row["max_order"], row["budget"], row["forecaster"], row["placement"])
        if row["forecaster"] == "newton" and row["max_order"] == 2:
            assert row["rel_l2"] < EXACT, key
        else:
            assert EXACT < row["rel_l2"] < math.inf, key
        if row["forecaster"] != "hermite":
            assert straight[key]["rel_l2"] < EXACT, key
        else:  # Hermite's contracted basis bends even a straight line
            assert straight[key]["rel_l2"] > EXACT, key


def test_full_step_counts_are_the_schedules() -> None:
    """Every row ran the full steps its config plans (the cache's count) and spent exactly its budget; the interval
    rows are the paper's schedule at the hand-computed N: 3 + floor(17 / N) = K gives N=5 for K=6, N=3 for K=8."""
    grid = Grid(num_steps=20, budgets=(6, 8), orders=(1,), first_enhance=3)
    rows = run_grid(toy_run(quadratic, 20), grid)
    for row in rows:
        setting = Setting(row["forecaster"], row["placement"], row["max_order"], row["budget"], row["interval"])
        planned = full_step_indices(20, setting.config(grid))
        assert row["full_step_list"] == planned
        assert row["full_steps"] == len(planned) == row["budget"]
    intervals = {(r["budget"], r["interval"], tuple(r["full_step_list"])) for r in rows if r["placement"] == INTERVAL}
    assert intervals == {(6, 5, (0, 1, 2, 7, 12, 17)), (8, 3, (0, 1, 2, 5, 8, 11, 14, 17))}


def test_interval_for_budget_matches_the_papers_schedules() -> None:
    # FLUX (E=3): N=6 is the paper's 10 full steps; K=8 has N=8 and N=9 (the larger spreads further); no N gives 11.
    assert [interval_for_budget(50, k, 3) for k in (8, 10, 11, 18)] == [9, 6, None, 3]
    # HunyuanVideo (E=1): N=5 is the paper's 10 full steps.
    assert [interval_for_budget(50, k, 1) for k in (8, 10, 11)] == [7, 5, None]


def test_a_run_that_does_not_drive_the_cache_is_refused() -> None:
    grid = Grid(num_steps=5, budgets=(4,), orders=(1,), first_enhance=3)
    with pytest.raises(RuntimeError, match="announced 0 steps"):
        run_grid(lambda cache: torch.ones(3), grid)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"budgets": (3,)}, "must exceed the 3 warm-up steps"),
        ({"budgets": (10,)}, "stay below the 10 steps"),
        ({"orders": (-1,)}, "orders must be >= 0"),
        ({"placements": ("list",)}, "unknown forecasters or placements ['list']"),
    ],
)
def test_grid_refuses_what_it_cannot_measure(fields, message) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Grid(**{"num_steps": 10, "budgets": (4,), "orders": (1,), "first_enhance": 3, **fields})


def test_written_files_say_the_caveat_first(tmp_path) -> None:
    grid = Grid(num_steps=5, budgets=(4,), orders=(2,), first_enhance=3)
    rows = run_grid(toy_run(square, 5), grid)
    caveat = tiny_model_caveat("image")
    summary = write_results(tmp_path / "out", rows, grid, title="toy", caveat=caveat, lines=["settings"])
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir()) == sorted(RESULT_FILES)
    markdown = (folder / "results.md").read_text().splitlines()
    assert (
        markdown[0]
        == caveat
        == ("Tiny random-weight model: relative error only; says nothing about the real model's image quality.")
    )
    # The Taylor cells hold 1/√354 = 0.05315; the smallest error (Newton's 0) is bold.
    assert "| 2 | taylor | uniform | 0.05315 |" in markdown and "| 2 | newton | uniform | **0** |" in markdown
    assert "| 2 | newton | interval | **0** (N=2) |" in markdown
    saved = json.loads((folder / "results.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["caveat"] == caveat and saved["rows"] == rows
    assert (folder / "rel_error_vs_full_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------- the scripts

SCRIPTS = {"flux": flux_benchmark, "hunyuanvideo": hunyuan_benchmark}


@pytest.mark.parametrize("tree", list(SCRIPTS))
def test_script_runs_end_to_end_and_its_rows_are_its_samplers(tree, tmp_path) -> None:
    """--num-steps 10 --full-steps 4, orders 1 and 2: every forecaster x placement (the interval schedule exists at
    K=4: N=7 for FLUX's E=3, N=3 for HunyuanVideo's E=1) has a finite error above 0, and one row recomputed from
    the script's own model and sampler gives the recorded number exactly."""
    script = SCRIPTS[tree]
    out = tmp_path / "out"
    script.cli(["--num-steps", "10", "--full-steps", "4", "--orders", "1", "2", "--results-dir", str(out)])
    saved = json.loads((out / "results.json").read_text())
    output = "image" if tree == "flux" else "video"
    assert (out / "results.md").read_text().splitlines()[0] == tiny_model_caveat(output) == saved["caveat"]
    rows = saved["rows"]
    assert len(rows) == 2 * 3 * 3
    assert all(0 < row["rel_l2"] < math.inf and row["full_steps"] == 4 for row in rows)
    assert {row["interval"] for row in rows if row["placement"] == INTERVAL} == {7 if tree == "flux" else 3}

    grid = Grid(num_steps=10, budgets=(4,), orders=(2,), first_enhance=script.FIRST_ENHANCE)
    device = torch.device("cpu")
    model = script.random_flux(0, device) if tree == "flux" else script.random_hunyuan_video(0, device)
    run = script.sampler(model, 0, 10, device)
    config = Setting("newton", "late-dense", 2, 4).config(grid)
    expected = relative_error(run(TaylorCache(config)), run(None))
    recorded = [r for r in rows if (r["forecaster"], r["placement"], r["max_order"]) == ("newton", "late-dense", 2)]
    assert recorded[0]["rel_l2"] == expected


BAD_INPUTS = [
    (("--num-steps", "1"), "expected an integer in 2..1000"),
    (("--num-steps", "ten"), "expected an integer in 2..1000"),
    (("--full-steps", "0"), "expected an integer >= 1"),
    (("--full-steps", "8", "50", "--num-steps", "50"), "stay below --num-steps 50"),
    (("--full-steps", "WARMUP"), "warm-up steps"),
    (("--orders", "5"), "expected an integer in 0..4"),
    (("--seed", "-1"), "expected an integer in 0.."),
    (("--results-dir", "FILE"), "exists and is not a folder"),
    (("--device", "nonsense"), "is not a torch device"),
]


@pytest.mark.parametrize("tree", list(SCRIPTS))
@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
def test_bad_input_is_one_error_line(tree, extra, message, tmp_path, capsys) -> None:
    script = SCRIPTS[tree]
    (tmp_path / "a_file").write_text("not a folder")
    replace = {"FILE": str(tmp_path / "a_file"), "WARMUP": str(script.FIRST_ENHANCE)}
    argv = ["--results-dir", str(tmp_path / "out"), *(replace.get(arg, arg) for arg in extra)]
    assert_refused(script.cli, argv, message, capsys, watch=tmp_path)


@pytest.mark.parametrize("tree", list(SCRIPTS))
def test_every_flag_has_a_bad_input_row(tree) -> None:
    flags = {
        option
        for action in SCRIPTS[tree].build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    covered = {extra[0] for extra, _ in BAD_INPUTS}
    assert flags <= covered, flags - covered
    assert Path(SCRIPTS[tree].__file__).name == "benchmark_forecasters.py"

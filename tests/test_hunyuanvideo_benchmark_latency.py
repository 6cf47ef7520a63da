"""TaylorSeer-HunyuanVideo/benchmark_latency.py end to end on the tiny preset: each row's full steps against its
schedule, cache bytes equal to the distinct storages and to what the model's shapes say (no view of a larger buffer
kept alive), FORA at 1/(O+1) of TaylorSeer, the paper-size sizing on the meta device against the formula and
reference-semantics §8, the files, and one error line for bad input. Timing itself is not asserted."""

from __future__ import annotations

import json

import pytest
from cli_testing import assert_refused

from common.methods import fora_of
from common.taylor_cache import TaylorSeerConfig, full_step_indices
from taylorseer_hunyuanvideo import benchmark_latency
from taylorseer_hunyuanvideo.model import HUNYUAN_VIDEO_PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, INTERVAL, ORDER = 8, 3, 2
ARGS = ["--preset", "HYVideo-tiny", "--double-blocks", "2", "--single-blocks", "1", "--height", "64", "--width", "64",
        "--video-length", "5", "--text-tokens", "16", "--num-steps", str(STEPS), "--interval", str(INTERVAL),
        "--max-order", str(ORDER), "--first-enhance", "1", "--repeats", "1", "--device", "cpu",
        "--malloc", "default"]  # fmt: skip
CONFIG = TaylorSeerConfig(interval=INTERVAL, max_order=ORDER, first_enhance=1)
# HYVideo-tiny: width 64; 64x64x5 is a 16 x 2 x 8 x 8 latent in 1x2x2 patches: 2 x 4 x 4 = 32 image tokens.
WIDTH, IMAGE_TOKENS, TEXT_TOKENS, DOUBLE, SINGLE = 64, 32, 16, 2, 1


def cache_bytes(stored: int, image: int, text: int, width: int, itemsize: int, double: int, single: int) -> int:
    """Per double-stream block img_attn + img_mlp over the image tokens and txt_attn + txt_mlp over the text tokens;
    per single-stream block ``total`` over both; ``stored`` outputs of each."""
    per_double = 2 * image * width + 2 * text * width
    per_single = (image + text) * width
    return stored * itemsize * (double * per_double + single * per_single)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latency")
    return folder, benchmark_latency.cli([*ARGS, "--results-dir", str(folder)])


def rows_of(saved: dict) -> dict[str, dict]:
    return {row["name"]: row for row in saved["results"]}


def test_rows_follow_their_schedules(record) -> None:
    _, saved = record
    rows = rows_of(saved)
    assert list(rows) == ["full", "FORA", "TaylorSeer"]
    assert rows["full"]["full_steps"] == list(range(STEPS))
    assert rows["TaylorSeer"]["full_steps"] == full_step_indices(STEPS, CONFIG) == [0, 3, 6]
    assert rows["FORA"]["full_steps"] == full_step_indices(STEPS, fora_of(CONFIG)) == [0, 3, 6]
    assert rows["TaylorSeer"]["config"]["max_order"] == ORDER and rows["FORA"]["config"]["max_order"] == 0
    assert all(len(row["step_seconds"]) == STEPS for row in rows.values())


def test_cache_bytes_are_the_held_outputs_and_nothing_else(record) -> None:
    _, saved = record
    rows = rows_of(saved)
    for row in rows.values():
        assert row["cache_storage_bytes"] == row["cache_bytes"]  # no view of a larger buffer kept alive
    one = cache_bytes(1, IMAGE_TOKENS, TEXT_TOKENS, WIDTH, 4, DOUBLE, SINGLE)  # float32
    assert one == 4 * (2 * (2 * 32 * 64 + 2 * 16 * 64) + 48 * 64) == 61440
    assert rows["full"]["cache_bytes"] == 0 and rows["full"]["cache_tensors"] == 0
    assert rows["FORA"]["cache_bytes"] == one
    assert rows["TaylorSeer"]["cache_bytes"] == (ORDER + 1) * one  # 3 full steps ran: O + 1 outputs kept
    assert rows["TaylorSeer"]["cache_bytes"] == (ORDER + 1) * rows["FORA"]["cache_bytes"]
    assert rows["TaylorSeer"]["cache_tensors"] == (ORDER + 1) * (4 * DOUBLE + SINGLE) == 27


def test_settings_say_which_model_ran(record) -> None:
    _, saved = record
    settings = saved["settings"]
    assert (settings["double_blocks"], settings["single_blocks"]) == (DOUBLE, SINGLE)
    assert (settings["preset_double_blocks"], settings["preset_single_blocks"]) == (2, 2)
    assert (settings["image_tokens"], settings["text_tokens"]) == (IMAGE_TOKENS, TEXT_TOKENS)
    assert settings["dtype"] == "float32"
    assert "does not depend on the depth" in settings["depth_note"]
    assert settings["decode"] is False and "Text encoders not timed" in settings["stages_note"]
    counts = settings["parameters"]
    blocks = DOUBLE * counts["per_double_block"] + SINGLE * counts["per_single_block"]
    assert counts["total"] == counts["outside_blocks"] + blocks


def test_paper_size_sizing_on_the_meta_device(record) -> None:
    _, saved = record
    sizing = saved["paper_cache_bytes"]
    # 480x640x65: 17 x 60 x 80 latent, 17 x 30 x 40 = 20400 image tokens; 256 text tokens; bfloat16; full depth 2 + 2.
    assert (sizing["image_tokens"], sizing["text_tokens"], sizing["dtype"]) == (20400, 256, "bfloat16")
    one = cache_bytes(1, 20400, 256, WIDTH, 2, 2, 2)
    assert sizing["FORA"]["cache_bytes"] == sizing["FORA"]["cache_storage_bytes"] == one
    assert sizing["TaylorSeer"]["cache_bytes"] == sizing["TaylorSeer"]["cache_storage_bytes"] == (ORDER + 1) * one
    assert sizing["TaylorSeer"]["analytic_bytes"] == (ORDER + 1) * one
    assert sizing["reference"]["unused_attn_bytes"] == (ORDER + 1) * 2 * (20400 + 256) * WIDTH * 2
    assert sizing["reference"]["doc_gb"] is None  # §8 sizes the full-size model only


def test_files_and_table(record) -> None:
    folder, saved = record
    assert {p.name for p in folder.iterdir()} == {"results.json", "results.md", "step_times.png"}
    assert json.loads((folder / "results.json").read_text()) == saved
    text = (folder / "results.md").read_text()
    assert "a slice of 2 + 1 blocks (of 2 + 2), same widths" in text and "| TaylorSeer | 3/8 |" in text


def test_cache_size_only_writes_the_sizing(tmp_path) -> None:
    argv = ["--preset", "HYVideo-tiny", "--num-steps", "6", "--max-order", "1", "--cache-size-only",
            "--malloc", "default", "--results-dir", str(tmp_path)]  # fmt: skip
    sizing = benchmark_latency.cli(argv)
    assert [p.name for p in tmp_path.iterdir()] == ["paper_cache_bytes.json"]
    assert json.loads((tmp_path / "paper_cache_bytes.json").read_text())["paper_cache_bytes"] == sizing
    one = cache_bytes(1, 20400, 256, WIDTH, 2, 2, 2)
    assert sizing["TaylorSeer"]["cache_bytes"] == 2 * one and sizing["FORA"]["cache_bytes"] == one


@pytest.mark.parametrize(("order", "doc_gb"), [(1, 30.5), (2, 45.7)])
def test_full_size_count_matches_reference_semantics(order: int, doc_gb: float) -> None:
    """§8, HunyuanVideo 480x640x65 bf16: the reference's cache is this count plus 40 single-stream attn outputs per
    order (O=1: 30.5 GB, 10.2 GB of it the attn; O=2: 45.7 GB). Without the attn: 10.15 GB per order."""
    params = HUNYUAN_VIDEO_PRESETS["HYVideo-T/2-cfgdistill"]
    size = benchmark_latency.VideoSize(480, 640, 65, 256)
    ours = benchmark_latency.analytic_cache_bytes(params, size, order + 1, 2)
    unused = benchmark_latency.reference_unused_attn_bytes(params, size, order + 1, 2)
    assert ours == cache_bytes(order + 1, 20400, 256, 3072, 2, 20, 40)
    assert (ours + unused) / 1e9 == pytest.approx(doc_gb, abs=0.05)
    assert ours / 1e9 == pytest.approx((order + 1) * 10.15, abs=0.01)
    if order == 1:
        assert unused / 1e9 == pytest.approx(10.2, abs=0.05)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--double-blocks", "0"], "--double-blocks"),
        (["--single-blocks", "3"], "--single-blocks 3: the preset HYVideo-tiny has 2"),
        (["--video-length", "6"], "4k + 1 frames"),
    ],
)
def test_bad_input_is_one_error_line(extra, message, tmp_path, capsys) -> None:
    argv = [*ARGS, "--results-dir", str(tmp_path / "out"), *extra]
    assert_refused(benchmark_latency.cli, argv, message, capsys, watch=tmp_path)


def test_unwritable_results_dir_is_one_error_line(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = [*ARGS, "--results-dir", str(blocker / "out")]
    assert_refused(benchmark_latency.cli, argv, "--results-dir", capsys, watch=tmp_path)

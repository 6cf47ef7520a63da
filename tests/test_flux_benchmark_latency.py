"""TaylorSeer-FLUX/benchmark_latency.py end to end on flux-tiny: each row's steps and schedule, cache bytes equal to
what the model's shapes say (no hidden buffers, FORA 1/(O+1) of TaylorSeer), the meta-device sizing against the same
count and against reference-semantics §8, the CPU and CUDA defaults, the files, and one error line for bad input.
Timing itself is not asserted."""

from __future__ import annotations

import json

import pytest
import torch
from cli_testing import assert_refused

from common.taylor_cache import TaylorSeerConfig, full_step_indices
from taylorseer_flux import benchmark_latency
from taylorseer_flux.autoencoder import FLUX_AE_CONFIG
from taylorseer_flux.model import FLUX_PRESETS, Flux

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = ["--batch", "2", "--height", "64", "--width", "96", "--text-tokens", "8"]
SCHEDULE = ["--num-steps", "8", "--interval", "3", "--max-order", "2", "--first-enhance", "1",
            "--derivative-start-step", "0"]  # fmt: skip
ARGS = ["--preset", "flux-tiny", "--paper-preset", "flux-tiny", "--device", "cpu", "--repeats", "1",
        "--malloc", "default", *SIZE, *SCHEDULE]  # fmt: skip
BATCH, IMAGE_TOKENS, TEXT_TOKENS = 2, (64 // 16) * (96 // 16), 8
CONFIG = TaylorSeerConfig(interval=3, max_order=2, first_enhance=1)


def output_set_bytes(batch: int, image_tokens: int, text_tokens: int, itemsize: int) -> int:
    """One output of every cached module of flux-tiny, counted on the model: a double block caches img_attn and
    img_mlp over the image tokens and txt_attn and txt_mlp over the text tokens, a single block one output over
    both; every output is hidden_size wide."""
    with torch.device("meta"):
        model = Flux(FLUX_PRESETS["flux-tiny"])
    double = len(model.double_blocks) * 2 * (image_tokens + text_tokens)
    single = len(model.single_blocks) * (image_tokens + text_tokens)
    return (double + single) * batch * model.hidden_size * itemsize


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latency")
    return folder, benchmark_latency.cli([*ARGS, "--results-dir", str(folder)])


def test_rows_follow_their_schedules(record) -> None:
    _, saved = record
    rows = {row["name"]: row for row in saved["results"]}
    assert list(rows) == ["full", "FORA", "TaylorSeer"]
    assert rows["full"]["full_steps"] == list(range(8))
    assert rows["FORA"]["full_steps"] == rows["TaylorSeer"]["full_steps"] == full_step_indices(8, CONFIG) == [0, 3, 6]
    assert rows["TaylorSeer"]["config"]["max_order"] == 2 and rows["FORA"]["config"]["max_order"] == 0
    assert all(len(row["step_seconds"]) == 8 for row in rows.values())


def test_cache_bytes_are_the_held_outputs_and_nothing_else(record) -> None:
    _, saved = record
    rows = {row["name"]: row for row in saved["results"]}
    one_set = output_set_bytes(BATCH, IMAGE_TOKENS, TEXT_TOKENS, 4)  # float32 on CPU
    assert one_set == 2 * 64 * 4 * (2 * 32 + 32)
    assert rows["FORA"]["cache_bytes"] == one_set and rows["FORA"]["cache_tensors"] == 5
    assert rows["TaylorSeer"]["cache_bytes"] == 3 * one_set and rows["TaylorSeer"]["cache_tensors"] == 15
    assert rows["TaylorSeer"]["cache_bytes"] == (CONFIG.max_order + 1) * rows["FORA"]["cache_bytes"]
    for row in rows.values():
        assert row["cache_storage_bytes"] == row["cache_bytes"]  # no view of a larger buffer kept alive
    assert rows["full"]["cache_bytes"] == 0


def test_paper_size_sizing_in_the_record(record) -> None:
    _, saved = record
    sizing = saved["paper_cache_bytes"]
    one_set = output_set_bytes(1, (1024 // 16) ** 2, 512, 2)  # 1024², batch 1, bf16, 512 text tokens
    assert sizing["output_set_bytes"] == one_set
    assert sizing["FORA"]["cache_bytes"] == one_set
    assert sizing["TaylorSeer O=1"]["cache_bytes"] == 2 * one_set
    assert sizing["TaylorSeer O=2"]["cache_bytes"] == 3 * one_set
    assert all(sizing[k]["cache_storage_bytes"] == sizing[k]["cache_bytes"] for k in ("FORA", "TaylorSeer O=2"))
    assert sizing["reference_gb"] == {}  # §8 has figures for flux-dev only


def test_meta_sizing_keeps_fewer_outputs_when_fewer_full_steps_form_derivatives() -> None:
    """Full steps 0, 3, 6 with derivatives from step 4: step 3 starts over, so even O=2 keeps 2 outputs."""
    config = TaylorSeerConfig(interval=3, max_order=2, first_enhance=1, derivative_start_step=4)
    workload = benchmark_latency.Workload(FLUX_PRESETS["flux-tiny"], 2, 64, 96, 8, torch.float32)
    sizing = benchmark_latency.cache_sizes("flux-tiny", workload, 8, config)
    one_set = output_set_bytes(BATCH, IMAGE_TOKENS, TEXT_TOKENS, 4)
    assert [sizing[k]["outputs_kept"] for k in ("FORA", "TaylorSeer O=1", "TaylorSeer O=2")] == [1, 2, 2]
    assert [sizing[k]["cache_bytes"] for k in ("FORA", "TaylorSeer O=1", "TaylorSeer O=2")] == [
        one_set,
        2 * one_set,
        2 * one_set,
    ]


def test_paper_size_count_matches_reference_semantics() -> None:
    """§8: flux-dev 1024² bf16 holds 2.15 GB per order; O=1 5.38 and O=2 7.53 GB include 1.08 GB of ToCa's raw
    attention, which this cache does not keep."""
    per_set = benchmark_latency.PAPER.output_set_bytes()
    assert per_set == (2 * 19 + 38) * (4096 + 512) * 3072 * 2
    assert round(per_set / 1e9, 2) == 2.15
    assert round(2 * per_set / 1e9, 2) == round(5.38 - 1.08, 2)
    assert abs(3 * per_set / 1e9 - (7.53 - 1.08)) < 0.01
    assert benchmark_latency.has_reference(benchmark_latency.paper_workload("flux-schnell"))


def test_device_defaults() -> None:
    """CPU: flux-dev's widths, one block of each kind, 128², 32 text tokens, float32; CUDA: the paper's size."""
    args = benchmark_latency.build_parser().parse_args([])
    cpu, taken = benchmark_latency.workload_from_args(args, cuda=False)
    assert (cpu.params.depth, cpu.params.depth_single_blocks, cpu.params.hidden_size) == (1, 1, 3072)
    assert (cpu.height, cpu.width, cpu.text_tokens, cpu.dtype) == (128, 128, 32, torch.float32)
    assert "--double-blocks 1" in taken and "--text-tokens 32" in taken
    assert "does not depend on the depth" in benchmark_latency.slice_note("flux-dev", cpu)
    cuda, _ = benchmark_latency.workload_from_args(args, cuda=True)
    assert cuda == benchmark_latency.PAPER
    assert benchmark_latency.slice_note("flux-dev", cuda) is None


def test_vae_stage_decodes_the_batch() -> None:
    tiny_ae = {**FLUX_AE_CONFIG, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
    workload = benchmark_latency.Workload(FLUX_PRESETS["flux-tiny"], 2, 64, 96, 8, torch.float32)
    images = benchmark_latency.vae_stage(tiny_ae, workload, torch.device("cpu"), 0)()
    assert images.shape == (2, 3, 64, 96) and images.abs().max() <= 1


def test_files(record) -> None:
    folder, saved = record
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(saved))
    markdown = (folder / "results.md").read_text()
    assert "FLUX `flux-tiny`" in markdown and "| TaylorSeer | 3/8 |" in markdown and "Transformer loop only" in markdown
    assert (folder / "step_times.png").stat().st_size > 0
    assert saved["settings"]["workload"]["image_tokens"] == IMAGE_TOKENS and saved["settings"]["slice"] is None


def test_cache_size_only(tmp_path, capsys) -> None:
    saved = benchmark_latency.cli([*ARGS, "--cache-size-only", "--results-dir", str(tmp_path)])
    one_set = output_set_bytes(1, (1024 // 16) ** 2, 512, 2)
    assert saved["paper_cache_bytes"]["TaylorSeer O=2"]["cache_bytes"] == 3 * one_set
    assert json.loads((tmp_path / "cache_size.json").read_text()) == json.loads(json.dumps(saved))
    assert "| TaylorSeer O=2 | 3 |" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache_size.json", "cache_size.md"]


def test_bad_input(tmp_path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cli = benchmark_latency.cli
    out = ["--results-dir", str(tmp_path / "out")]
    assert_refused(cli, [*ARGS, "--results-dir", str(blocker / "x")], "--results-dir", capsys)
    assert_refused(cli, [*ARGS, *out, "--double-blocks", "0"], "--double-blocks", capsys, watch=tmp_path)
    assert_refused(cli, [*ARGS, *out, "--double-blocks", "2"], "has 1", capsys, watch=tmp_path)
    assert_refused(cli, [*ARGS, *out, "--height", "8"], "--height", capsys, watch=tmp_path)
    assert_refused(cli, [*ARGS, *out, "--interval", "1"], "full compute", capsys, watch=tmp_path)
    assert_refused(cli, [*ARGS, *out, "--device", "cuda:7"], "--device", capsys, watch=tmp_path)
    monkeypatch.setattr(benchmark_latency, "available_memory", lambda device: 1000)
    assert_refused(cli, [*ARGS, *out], "fewer --double-blocks", capsys, watch=tmp_path)

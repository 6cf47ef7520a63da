"""What a resumed run trusts: weights fingerprints, per-file checksums in the records, damaged files set aside, and
non-finite outputs refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from common.cli import UsageError
from common.integrity import (
    NonFiniteOutputError,
    check_finite,
    file_sha256,
    set_aside,
    verify_png,
    weights_fingerprint,
)
from common.run_records import (
    CHECKSUM,
    append_records,
    check_consistent,
    damaged_outputs,
    read_records,
    record_written,
    set_aside_damaged,
    sync_records,
)


def save_weights(path, value: float) -> None:
    save_file({"w": torch.full((256, 256), value), "b": torch.arange(10.0)}, str(path))


def test_fingerprint_is_stable_under_moves_and_changes_with_any_tensor(tmp_path) -> None:
    save_weights(tmp_path / "a.safetensors", 1.0)
    first = weights_fingerprint([tmp_path / "a.safetensors"])
    assert len(first) == 16 and int(first, 16) >= 0
    (tmp_path / "moved").mkdir()
    shutil.copy2(tmp_path / "a.safetensors", tmp_path / "moved" / "renamed.safetensors")
    assert weights_fingerprint([tmp_path / "moved" / "renamed.safetensors"]) == first
    # Same header (names, shapes, offsets), other values: a fine-tune.
    save_weights(tmp_path / "b.safetensors", 1.5)
    assert weights_fingerprint([tmp_path / "b.safetensors"]) != first
    # Folders count every weight file by its relative name.
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy2(tmp_path / "a.safetensors", folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    by_folder = weights_fingerprint([folder])
    (folder / "config.json").write_text('{"x": 1}')
    assert weights_fingerprint([folder]) != by_folder
    with pytest.raises(UsageError, match="weights not found"):
        weights_fingerprint([tmp_path / "missing.pt"])


def write_png(path, size=(8, 6), value=10) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_verify_png_finds_truncation_and_wrong_sizes(tmp_path) -> None:
    good = tmp_path / "good.png"
    write_png(good)
    assert verify_png(good) is None and verify_png(good, (8, 6)) is None
    assert verify_png(good, (6, 8)) == "is 8x6, expected 6x8"
    cut = tmp_path / "cut.png"
    for kept in (-20, -5):  # PIL itself decodes these: the pixel data is complete, only the end chunk is cut
        cut.write_bytes(good.read_bytes()[:kept])
        assert verify_png(cut) == "is cut short (no PNG end chunk)"
    cut.write_bytes(good.read_bytes()[:40])
    assert verify_png(cut).startswith("does not decode")
    (tmp_path / "text.png").write_text("not an image")
    assert verify_png(tmp_path / "text.png").startswith("does not decode")


def test_set_aside_never_deletes(tmp_path) -> None:
    path = tmp_path / "00000.png"
    for content in (b"one", b"two"):
        path.write_bytes(content)
        set_aside(path)
    assert not path.exists()
    assert (tmp_path / "00000.png.damaged").read_bytes() == b"one"
    assert (tmp_path / "00000.png.damaged1").read_bytes() == b"two"


def test_check_finite_names_the_suspects() -> None:
    check_finite(torch.ones(3), "samples", "--cfg-scale")
    with pytest.raises(NonFiniteOutputError, match=r"holds 2 non-finite values .* of 4; .* Check --cfg-scale"):
        check_finite(torch.tensor([1.0, float("nan"), float("inf"), 0.0]), "samples", "--cfg-scale")


def test_records_carry_checksums_that_find_damaged_files(tmp_path) -> None:
    records = tmp_path / "metadata.jsonl"
    planned = {f"{i:05d}.png": {"file": f"{i:05d}.png", "seed": i, "weights_id": "abc"} for i in range(4)}
    append_records(records, {}, planned)
    for i in range(3):
        write_png(tmp_path / f"{i:05d}.png", value=i)
        record_written(records, planned[f"{i:05d}.png"], tmp_path / f"{i:05d}.png")
    write_png(tmp_path / "00003.png", value=3)  # written, then killed before its record
    existing = read_records(records)
    assert existing["00000.png"][CHECKSUM] == file_sha256(tmp_path / "00000.png")
    check_consistent(tmp_path, existing, planned)  # the checksum is no setting
    assert append_records(records, existing, planned) == 0  # nothing changed, nothing appended

    cut = tmp_path / "00001.png"
    cut.write_bytes(cut.read_bytes()[:-10])
    shutil.copy2(tmp_path / "00000.png", tmp_path / "00002.png")  # swapped: decodes fine, wrong content
    damaged = damaged_outputs(tmp_path, existing, planned, verify_png)
    assert sorted(damaged) == ["00001.png", "00002.png"]
    assert all("differs from what this folder's run wrote" in reason for reason in damaged.values())

    (tmp_path / "00003.png").write_bytes(b"\x89PNG broken")
    assert damaged_outputs(tmp_path, existing, planned, verify_png)["00003.png"].startswith("does not decode")


def test_other_weights_are_refused(tmp_path) -> None:
    records = tmp_path / "metadata.jsonl"
    old = {"00000.png": {"file": "00000.png", "seed": 0, "weights_id": "aaaa"}}
    append_records(records, {}, old)
    write_png(tmp_path / "00000.png")
    new = {"00000.png": {"file": "00000.png", "seed": 0, "weights_id": "bbbb"}}
    with pytest.raises(UsageError, match="weights_id 'aaaa' -> 'bbbb'"):
        check_consistent(tmp_path, read_records(records), new)


def test_records_never_hold_nan(tmp_path) -> None:
    records = tmp_path / "metadata.jsonl"
    with pytest.raises(ValueError):
        append_records(records, {}, {"x.png": {"file": "x.png", "guidance": float("nan")}})
    assert not records.exists() or records.read_text() == ""
    append_records(records, {}, {"x.png": {"file": "x.png", "guidance": 3.5}})
    assert json.loads(records.read_text()) == {"file": "x.png", "guidance": 3.5}


def test_sync_records_before_a_resumed_run(tmp_path, capsys) -> None:
    """The records after set-aside: a new file gets its settings, a remade file loses its stale checksum, and a file
    adopted without a checksum (killed between writing and recording) gets one."""
    records = tmp_path / "metadata.jsonl"
    planned = {f"{i:05d}.png": {"file": f"{i:05d}.png", "seed": i} for i in range(4)}
    append_records(records, {}, {name: planned[name] for name in ("00000.png", "00001.png", "00002.png")})
    for i in (0, 1):
        write_png(tmp_path / f"{i:05d}.png", value=i)
        record_written(records, planned[f"{i:05d}.png"], tmp_path / f"{i:05d}.png")
    write_png(tmp_path / "00002.png", value=2)  # written, never recorded
    (tmp_path / "00001.png").write_bytes(b"cut")  # damaged after it was recorded
    existing = read_records(records)
    damaged = damaged_outputs(tmp_path, existing, planned, verify_png)
    assert list(damaged) == ["00001.png"]
    set_aside_damaged(tmp_path, damaged)
    assert "00001.png" in capsys.readouterr().err and (tmp_path / "00001.png.damaged").read_bytes() == b"cut"

    sync_records(records, existing, planned)
    after = read_records(records)
    assert after["00000.png"] == existing["00000.png"]  # adopted with its checksum: unchanged
    assert after["00001.png"] == planned["00001.png"]  # to be made again: no stale checksum
    assert after["00002.png"] == {**planned["00002.png"], CHECKSUM: file_sha256(tmp_path / "00002.png")}
    assert after["00003.png"] == planned["00003.png"]  # new
    lines = records.read_text().splitlines()
    sync_records(records, after, planned)
    assert records.read_text().splitlines() == lines  # in line already: nothing appended

"""The bundled model's ingredients: the digits data, the shipped classifier, and a resumable train.py."""

import json

import pytest
import torch
from cli_testing import assert_refused

from common.checkpoint import read_checkpoint_file
from taylorseer_dit import train
from taylorseer_dit.digits import CLASSIFIER_PATH, accuracy, load_classifier, load_digits, split_indices


def test_digits_are_1797_images_in_range():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 16, 16) and labels.shape == (1797,)
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert torch.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert load_digits(8)[0].shape == (1797, 1, 8, 8)


def test_shipped_classifier_recognises_held_out_digits():
    images, labels = load_digits()
    _, test = split_indices(len(images))
    assert accuracy(load_classifier(), images[test], labels[test]) >= 0.97


def test_missing_classifier_says_how_to_rebuild(tmp_path):
    from common.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="train_classifier.py"):
        load_classifier(tmp_path / "missing.safetensors")
    assert CLASSIFIER_PATH.exists()


def train_argv(results, *extra: str) -> list[str]:
    return ["--model", "DiT-Tiny/4", "--batch-size", "8", "--ckpt-every", "2", "--results-dir", str(results), *extra]


def train_args(results, *extra: str):
    return train.build_parser().parse_args(train_argv(results, *extra))


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    train.main(train_args(tmp_path / "straight", "--steps", "4"))
    train.main(train_args(tmp_path / "resumed", "--steps", "2"))
    train.main(train_args(tmp_path / "resumed", "--steps", "4", "--resume"))
    straight = read_checkpoint_file(tmp_path / "straight" / "last.pt")
    resumed = read_checkpoint_file(tmp_path / "resumed" / "last.pt")
    assert straight["step"] == resumed["step"] == 4
    for key in ("model", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), (key, name)
    assert (tmp_path / "straight" / "loss.png").exists()


def assert_same(a, b, where="checkpoint"):
    """Nested dicts/lists of tensors and numbers are equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def log_columns(path):
    """(step, loss) of every row: the seconds column is wall-clock time, which no two runs share."""
    return [tuple(line.split(",")[:2]) for line in path.read_text().splitlines()]


def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """Killed during step 10, after the checkpoint of step 8 and while writing the log row of step 10 (cut to "1"):
    the resumed run restores the random state and the 3 losses of steps 6..8 that belong to row 10, and drops the cut
    row, so its weights, optimizer state and log equal those of a run that never stopped."""
    argv = ["--ckpt-every", "4", "--log-every", "5", "--steps", "10"]
    train.cli(train_argv(tmp_path / "straight", *argv))

    real_update_ema, calls = train.update_ema, []

    def killed_at_step_10(*args):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        real_update_ema(*args)

    killed = tmp_path / "killed"
    with monkeypatch.context() as patch:
        patch.setattr(train, "update_ema", killed_at_step_10)
        with pytest.raises(KeyboardInterrupt):
            train.cli(train_argv(killed, *argv))
    assert read_checkpoint_file(killed / "last.pt")["step"] == 8
    with (killed / "loss.csv").open("a") as log:
        log.write("1")  # the first byte of "10,<loss>,<seconds>\n"
    train.cli(train_argv(killed, *argv, "--resume"))

    straight, resumed = (
        read_checkpoint_file(tmp_path / "straight" / "last.pt"),
        read_checkpoint_file(killed / "last.pt"),
    )
    for key in ("model", "ema", "opt", "step", "rng", "window"):
        assert_same(straight[key], resumed[key], key)
    assert log_columns(killed / "loss.csv") == log_columns(tmp_path / "straight" / "loss.csv")
    assert [step for step, _ in log_columns(killed / "loss.csv")] == ["step", "5", "10"]
    assert (killed / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_on_another_device_type_warns(tmp_path, capsys):
    """The weights continue, but the random numbers of another device differ from those an uninterrupted run draws."""
    results = tmp_path / "run"
    train.cli(train_argv(results, "--steps", "2"))
    state = read_checkpoint_file(results / "last.pt")
    state["args"].device = "cuda:0"
    torch.save(state, results / "last.pt")
    capsys.readouterr()
    train.cli(train_argv(results, "--steps", "3", "--resume"))
    assert "warning: --device cpu: the checkpoint trained on cuda:0;" in capsys.readouterr().err
    assert read_checkpoint_file(results / "last.pt")["step"] == 3


def test_new_run_replaces_the_log_of_a_run_without_checkpoint(tmp_path, capsys):
    """Rows logged before a first checkpoint cannot be continued: a new run replaces them, and says so."""
    results = tmp_path / "run"
    results.mkdir()
    (results / "loss.csv").write_text("step,loss,seconds\n1,0.9,0.1\n")
    train.cli(train_argv(results, "--steps", "1", "--log-every", "5"))
    assert "warning: replacing" in capsys.readouterr().err
    assert (results / "loss.csv").read_text() == "step,loss,seconds\n"


def test_resume_drops_the_log_rows_after_the_checkpoint(tmp_path):
    """A run stopped after logging step 6 but before its checkpoint at 8 resumes from 4: the log keeps rows up to 4
    and the resumed run logs 6 once."""
    results = tmp_path / "run"
    train.main(train_args(results, "--steps", "4", "--ckpt-every", "4", "--log-every", "2"))
    log = results / "loss.csv"
    log.write_text(log.read_text() + "6,9.999999,1.0\n")  # logged by the stopped run after its last checkpoint
    (results / ".tmp-4242-0.tmp").write_bytes(b"half a checkpoint")  # its checkpoint write was cut short
    train.main(train_args(results, "--steps", "6", "--ckpt-every", "4", "--log-every", "2", "--resume"))
    lines = log.read_text().splitlines()
    assert lines[0] == "step,loss,seconds" and [line.split(",")[0] for line in lines[1:]] == ["2", "4", "6"]
    assert lines[3].split(",")[1] != "9.999999"
    assert not [p.name for p in results.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_truncate_loss_log_keeps_rows_up_to_the_step(tmp_path):
    log = tmp_path / "loss.csv"
    log.write_text("step,loss,seconds\n100,0.5,1.0\n200,0.4,2.0\n300,0.3,3.0\n")
    assert train.truncate_loss_log(log, 200) == 2
    assert log.read_text() == "step,loss,seconds\n100,0.5,1.0\n200,0.4,2.0\n"
    assert train.truncate_loss_log(tmp_path / "missing.csv", 100) == 0
    assert (tmp_path / "missing.csv").read_text() == "step,loss,seconds\n"


def test_docstring_names_the_shipped_command_file():
    assert "assets/dit_xs4_digits_ema.json" in train.__doc__
    assert (train.Path(train.__file__).parent / "assets" / "dit_xs4_digits_ema.json").is_file()


def test_ema_decay_warms_up_to_its_target():
    assert [train.ema_decay(s, 0.9995) for s in (0, 8, 90)] == [0.1, 0.5, 0.91]
    assert train.ema_decay(100_000, 0.9995) == 0.9995


def test_ema_is_the_decayed_average_and_export_is_fp16(tmp_path):
    export = tmp_path / "ema.safetensors"
    train.main(train_args(tmp_path / "run", "--steps", "1", "--ema-decay", "0.5"))
    first = read_checkpoint_file(tmp_path / "run" / "last.pt")
    train.main(train_args(tmp_path / "run", "--steps", "2", "--ema-decay", "0.5", "--resume", "--export", str(export)))
    second = read_checkpoint_file(tmp_path / "run" / "last.pt")
    decay = train.ema_decay(1, 0.5)  # the second step (index 1): min(0.5, 2 / 11)
    assert decay == pytest.approx(2 / 11)
    for name, ema in second["ema"].items():
        if name != "pos_embed":  # frozen, identical everywhere
            torch.testing.assert_close(ema, decay * first["ema"][name] + (1 - decay) * second["model"][name])
    # adaLN-Zero: the gates get gradients from step 2 on (the attention weights only from step 3).
    name = "blocks.0.adaLN_modulation.1.weight"
    assert not torch.equal(second["ema"][name], second["model"][name])

    from safetensors.torch import load_file

    exported = load_file(export)
    assert set(exported) == set(second["ema"]) and all(t.dtype == torch.float16 for t in exported.values())
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, second["ema"][name].half(), rtol=0, atol=0)
    meta = json.loads(export.with_suffix(".json").read_text())
    assert meta["command"].startswith("python TaylorSeer-DiT/train.py") and meta["steps"] == 2


def test_resume_without_a_checkpoint_fails_before_writing_anything(tmp_path):
    from common.cli import UsageError

    with pytest.raises(UsageError, match="last.pt does not exist; run without --resume"):
        train.main(train_args(tmp_path / "missing", "--steps", "2", "--resume"))
    assert not (tmp_path / "missing").exists()


CUT_LOG = "step,loss,seconds\n100,0.5,1.0\n200,0.4,2.0\n3"  # the row of step 300 cut after one byte


def test_truncate_loss_log_drops_a_cut_last_row(tmp_path, capsys):
    log = tmp_path / "loss.csv"
    log.write_text(CUT_LOG)
    assert train.truncate_loss_log(log, 200) == 2
    assert log.read_text() == "step,loss,seconds\n100,0.5,1.0\n200,0.4,2.0\n"
    assert "dropped the cut last row '3'" in capsys.readouterr().err
    log.write_text("step,loss,seco")  # cut inside the header
    assert train.truncate_loss_log(log, 200) == 0
    assert log.read_text() == "step,loss,seconds\n"


def test_plot_ignores_a_cut_last_row(tmp_path):
    log = tmp_path / "loss.csv"
    log.write_text(CUT_LOG)
    assert [(step, loss) for step, loss, _ in train.read_loss_log(log)] == [(100, 0.5), (200, 0.4)]
    train.plot_loss(log, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_writes_weights_and_metadata_to_two_files(tmp_path):
    """The metadata goes to the .json next to the .safetensors; neither overwrites the other."""
    export = tmp_path / "out" / "w.safetensors"
    train.cli(train_argv(tmp_path / "run", "--steps", "1", "--export", str(export)))
    from safetensors.torch import load_file

    assert load_file(export)["pos_embed"].dtype == torch.float16
    meta = json.loads(export.with_suffix(".json").read_text())
    assert meta["command"] == (
        "python TaylorSeer-DiT/train.py --model DiT-Tiny/4 --steps 1 --batch-size 8 "
        f"--results-dir {tmp_path / 'run'} --ckpt-every 2 --export {export}"
    )
    assert sorted(p.name for p in export.parent.iterdir()) == ["w.json", "w.safetensors"]


def test_command_line_omits_defaults_and_resume():
    args = train.build_parser().parse_args(["--steps", "6000", "--lr", "0.002", "--resume"])
    assert train.command_line(args) == "python TaylorSeer-DiT/train.py --lr 0.002"


def test_classifier_help_shows_the_split(capsys):
    from taylorseer_dit import train_classifier

    with pytest.raises(SystemExit) as exit_info:
        train_classifier.cli(["--help"])
    assert exit_info.value.code == 0
    assert "passes over the 80 % training split" in capsys.readouterr().out


def test_classifier_default_output_is_not_the_shipped_file():
    from taylorseer_dit import train_classifier

    default = train_classifier.build_parser().parse_args([]).output
    assert default == "results/digits_classifier.safetensors"
    assert "assets" not in default


def test_classifier_rerun_refuses_to_overwrite_and_overwrites_to_the_same_bytes(tmp_path, capsys):
    from taylorseer_dit import train_classifier

    output = tmp_path / "new" / "classifier.safetensors"
    accuracy = train_classifier.cli(["--epochs", "1", "--output", str(output)])
    assert 0.5 < accuracy <= 1.0
    first = output.read_bytes()
    assert_refused(train_classifier.cli, ["--epochs", "1", "--output", str(output)], "add --overwrite", capsys,
                   watch=tmp_path)  # fmt: skip
    train_classifier.cli(["--epochs", "1", "--output", str(output), "--overwrite"])
    assert output.read_bytes() == first
    assert sorted(p.name for p in output.parent.iterdir()) == ["classifier.safetensors"]

"""The bundled model's ingredients: the digits data, the shipped classifier, and a resumable train.py."""

import json

import pytest
import torch

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


def train_args(results, *extra: str):
    return train.build_parser().parse_args(
        ["--model", "DiT-Tiny/4", "--batch-size", "8", "--ckpt-every", "2", "--results-dir", str(results), *extra]
    )


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


def test_resume_drops_the_log_rows_after_the_checkpoint(tmp_path):
    """A run stopped after logging step 300 but before its checkpoint at 400 resumes from 200: the log keeps rows up
    to 200 and the resumed run logs 300 once."""
    results = tmp_path / "run"
    train.main(train_args(results, "--steps", "200", "--ckpt-every", "100"))
    log = results / "loss.csv"
    log.write_text(log.read_text() + "300,9.999999,1.0\n")  # logged by the stopped run after its last checkpoint
    (results / ".tmp-4242-0.tmp").write_bytes(b"half a checkpoint")  # its checkpoint write was cut short
    train.main(train_args(results, "--steps", "300", "--ckpt-every", "100", "--resume"))
    lines = log.read_text().splitlines()
    assert lines[0] == "step,loss,seconds" and [line.split(",")[0] for line in lines[1:]] == ["100", "200", "300"]
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
    from common.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="last.pt"):
        train.main(train_args(tmp_path / "missing", "--steps", "2", "--resume"))
    assert not (tmp_path / "missing").exists()

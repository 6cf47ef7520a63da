"""Train a class-conditional DiT on the offline digits dataset (pixel space, no VAE).

This is how the bundled model (assets/dit_xs4_digits_ema.safetensors) was made; the exact command is in
assets/dit_xs4_digits_ema.json. Checkpoints use DiT's train.py layout ({"model", "ema", "opt", "args", "step"}), so
``sample.py --ckpt results/.../last.pt`` samples from the EMA weights, and ``--resume`` continues a stopped run to
the same weights and loss log as a run that never stopped (the checkpoint holds the random state and the loss window).
"""

from __future__ import annotations

import argparse
import json
import time
from copy import deepcopy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from common.checkpoint import CheckpointError, read_checkpoint_file
from common.cli import (
    MAX_SEED,
    HelpFormatter,
    UsageError,
    check_output_file,
    check_output_folder,
    finite_float,
    int_range,
    parse_device,
    run_cli,
    warn,
)
from common.io import atomic_write, remove_stale_temps
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.digits import load_digits
from taylorseer_dit.models import DiT, DiT_models

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "loss.csv"
PLOT_NAME = "loss.png"
LOG_HEADER = "step,loss,seconds\n"
MAX_IMAGE_SIZE = 256  # the digits are 8x8: beyond this, upsampling adds only cost
# Settings that shape the weights or the loss log: a resumed run must use the checkpoint's values, or its result is
# neither run's. --steps, --ckpt-every, --export and --device only say how far, how often and where.
RESUME_SETTINGS = (
    "model",
    "image_size",
    "batch_size",
    "lr",
    "warmup_steps",
    "ema_decay",
    "class_dropout_prob",
    "seed",
    "log_every",
)
CHECKPOINT_KEYS = ("model", "ema", "opt", "args", "step", "rng")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", choices=list(DiT_models), default="DiT-XS/4", help="DiT preset")
    parser.add_argument(
        "--image-size",
        type=int_range(1, MAX_IMAGE_SIZE),
        default=16,
        help="digits are upsampled from 8x8 to this size; a multiple of the model's patch size",
    )
    parser.add_argument("--steps", type=int_range(1), default=6000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int_range(1), default=256, help="images per step")
    parser.add_argument(
        "--lr", type=finite_float(0, low_open=True), default=1e-3, help="AdamW learning rate after warm-up"
    )
    parser.add_argument("--warmup-steps", type=int_range(0), default=300, help="linear learning-rate warm-up")
    parser.add_argument(
        "--ema-decay",
        type=finite_float(0, 1, high_open=True),
        default=0.9995,
        help="EMA decay per step, after its warm-up",
    )
    parser.add_argument(
        "--class-dropout-prob",
        type=finite_float(0, 1, high_open=True),
        default=0.1,
        help="label dropout, enables CFG",
    )
    parser.add_argument(
        "--seed", type=int_range(0, MAX_SEED), default=0, help="seed of initialisation, batches and noise"
    )
    parser.add_argument("--results-dir", default="results/train-digits", help="checkpoints and the loss log")
    parser.add_argument(
        "--ckpt-every", type=int_range(1), default=500, help=f"steps between checkpoints ({CHECKPOINT_NAME})"
    )
    parser.add_argument(
        "--log-every", type=int_range(1), default=100, help=f"steps per row of {LOG_NAME} (their mean loss)"
    )
    parser.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda or cuda:N")
    parser.add_argument("--resume", action="store_true", help=f"continue from results-dir/{CHECKPOINT_NAME}")
    parser.add_argument(
        "--export",
        default=None,
        help="also write the final EMA weights here (fp16 .safetensors) and the command next to it (.json)",
    )
    return parser


def ema_decay(step: int, target: float) -> float:
    """EMA decay at optimizer step ``step`` (0-based): (1 + step) / (10 + step), capped at ``target``.

    Without this warm-up a short run's EMA still carries the zero-initialised adaLN and final layers (0.9995^5000 is
    8 %) and its early weights; with it, the average covers roughly the last tenth of training.
    """
    return min(target, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: DiT, model: DiT, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.mul_(decay).add_(param.detach(), alpha=1 - decay)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    return args.lr * min(1.0, (step + 1) / max(1, args.warmup_steps))


def export_paths(export: str | Path) -> tuple[Path, Path]:
    """(weights .safetensors, metadata .json) of ``--export``; the suffix check keeps the two names apart."""
    weights = check_output_file(export, "--export", (".safetensors",))
    meta = weights.with_suffix(".json")
    if meta.is_dir():
        raise UsageError(f"--export {weights}: its metadata path {meta.absolute()} is a folder; choose another name")
    return weights, meta


def export_ema(ema: DiT, path: Path) -> None:
    """fp16 safetensors: half the size, and the rounding (~5e-4 relative) is far below what sampling notices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().half().cpu().contiguous() for k, v in ema.state_dict().items()}
    atomic_write(path, lambda temp: save_file(tensors, str(temp)))


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run from scratch: the flags that differ from their defaults, no --resume."""
    defaults = vars(build_parser().parse_args([]))
    flags = []
    for key, value in vars(args).items():
        if key == "resume" or value == defaults.get(key):
            continue
        flags.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(["python TaylorSeer-DiT/train.py", *flags])


def read_loss_log(log_path: Path) -> list[tuple[int, float, str]]:
    """The rows of a loss log as (step, loss, line). A last line without its newline is a row that a killed write cut
    short: it is dropped with a warning (its step comes after the last checkpoint, so a resumed run logs it again).
    A missing log has no rows; a file that is not a loss log is a UsageError."""
    if not log_path.exists():
        return []
    *complete, cut = log_path.read_text(errors="replace").split("\n")  # a binary file fails the header check
    if cut:
        warn(f"{log_path}: dropped the cut last row {cut!r}, left by a killed write")
    if not complete:
        return []
    header, *lines = complete
    if header + "\n" != LOG_HEADER:
        raise UsageError(
            f"{log_path} is not a train.py loss log (header {header!r}): move it out of --results-dir, and the "
            "resumed run starts a new log"
        )
    return [_parse_log_line(log_path, number, line) for number, line in enumerate(lines, start=2)]


def _parse_log_line(log_path: Path, number: int, line: str) -> tuple[int, float, str]:
    try:
        step, loss, _seconds = line.split(",")
        return int(step), float(loss), line
    except ValueError:
        raise UsageError(
            f"{log_path} line {number} is not a 'step,loss,seconds' row: {line!r}; repair or remove that line"
        ) from None


def truncate_loss_log(log_path: Path, step: int) -> int:
    """Keep the rows of ``log_path`` up to ``step`` (the resumed checkpoint's): a run stopped after logging rows past
    its last checkpoint would log those steps again. Returns the number of rows kept; writes a bare header if the log
    is missing."""
    return keep_log_rows(log_path, read_loss_log(log_path), step)


def keep_log_rows(log_path: Path, rows: list[tuple[int, float, str]], step: int) -> int:
    """Write ``rows`` (from :func:`read_loss_log`) up to ``step`` to ``log_path``; returns how many were kept."""
    kept = [line + "\n" for row_step, _, line in rows if row_step <= step]
    atomic_write(log_path, lambda temp: temp.write_text(LOG_HEADER + "".join(kept)))
    return len(kept)


def plot_loss(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_loss_log(log_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([step for step, _, _ in rows], [loss for _, loss, _ in rows])
    ax.set(xlabel="step", ylabel="training loss (MSE + VB, mean per log row)", yscale="log", title=png_path.stem)
    fig.tight_layout()
    atomic_write(png_path, lambda temp: fig.savefig(temp, dpi=120, format="png"))
    plt.close(fig)


def check_image_size(args: argparse.Namespace) -> None:
    patch = int(args.model.rsplit("/", 1)[1])
    if args.image_size % patch:
        low, high = args.image_size // patch * patch, (args.image_size // patch + 1) * patch
        suggestion = f"{high}" if low == 0 else f"{low} or {high}"
        raise UsageError(
            f"--image-size {args.image_size} is not a multiple of {args.model}'s patch size {patch}: "
            f"use --image-size {suggestion}"
        )


def check_fresh_folder(results: Path) -> None:
    """A new run must not write over a run that has a checkpoint; the log of a run that stopped before its first
    checkpoint holds nothing to continue and is replaced."""
    if (results / CHECKPOINT_NAME).exists():
        raise UsageError(
            f"--results-dir {results} already holds a run ({CHECKPOINT_NAME}): add --resume to continue it, "
            "or choose another --results-dir"
        )
    if (results / LOG_NAME).exists():
        warn(f"replacing {results / LOG_NAME}: its run stopped before its first checkpoint")


@dataclass
class Resume:
    """What a resumed run continues: the checkpoint, and the rows of the loss log (read before anything is written,
    so that a log that is not one is refused up front)."""

    state: dict[str, Any]
    log_rows: list[tuple[int, float, str]]


def read_resume_point(args: argparse.Namespace, results: Path) -> Resume:
    """The checkpoint to continue from, checked against the flags, and its loss log."""
    path = results / CHECKPOINT_NAME
    if not path.is_file():
        raise UsageError(f"--resume: {path} does not exist; run without --resume to start a new run")
    try:
        state = read_checkpoint_file(path)
    except CheckpointError as err:
        raise UsageError(f"--resume: {' '.join(str(err).split())}") from None
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise UsageError(
            f"--resume: {path} is not a train.py checkpoint (no {', '.join(missing)}); choose another --results-dir"
        )
    check_resume_settings(args, state["args"], path)
    if args.steps < state["step"]:
        raise UsageError(
            f"--steps {args.steps} is below the step of {path} ({state['step']}): pass --steps {state['step']} or more"
        )
    return Resume(state, read_loss_log(results / LOG_NAME))


def check_resume_settings(args: argparse.Namespace, saved: argparse.Namespace, path: Path) -> None:
    """Refuse flags that differ from the checkpoint's (older checkpoints lack some settings: those are not
    compared); a device change only warns, since the weights stay valid but the random numbers differ."""
    differ = [
        f"--{key.replace('_', '-')} {getattr(args, key)} (checkpoint: {getattr(saved, key)})"
        for key in RESUME_SETTINGS
        if hasattr(saved, key) and getattr(saved, key) != getattr(args, key)
    ]
    if differ:
        raise UsageError(
            f"--resume: {path} was trained with other settings: {'; '.join(differ)}. Pass the checkpoint's values "
            "to continue it, or choose another --results-dir for a new run"
        )
    saved_device = getattr(saved, "device", "cpu")
    if torch.device(saved_device).type != torch.device(args.device).type:
        warn(
            f"--device {args.device}: the checkpoint trained on {saved_device}; the continued run draws other "
            "random numbers than an uninterrupted run would"
        )


def check_args(args: argparse.Namespace) -> tuple[torch.device, Resume | None]:
    """Every check that can fail, before anything is written: (the device, what to resume or None)."""
    device = parse_device(args.device)
    check_image_size(args)
    results = check_output_folder(args.results_dir, "--results-dir")
    if args.export is not None:
        export_paths(args.export)
    if args.resume:
        return device, read_resume_point(args, results)
    check_fresh_folder(results)
    return device, None


@dataclass
class Trainer:
    """The training state that a checkpoint holds, and one optimizer step."""

    model: DiT
    ema: DiT
    optimizer: torch.optim.Optimizer
    device: torch.device
    window: list[float]  # losses since the last log row: they belong to the next row, also after a resume
    seconds: float  # training time before this process started

    def state(self, args: argparse.Namespace, step: int, started: float) -> dict[str, Any]:
        checkpoint = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                      "opt": self.optimizer.state_dict(), "args": args, "step": step, "rng": torch.get_rng_state(),
                      "window": list(self.window), "seconds": self.seconds + time.time() - started}  # fmt: skip
        if self.device.type == "cuda":
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return checkpoint

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.window = list(state.get("window", []))
        self.seconds = float(state.get("seconds", 0.0))


def build_trainer(args: argparse.Namespace, device: torch.device) -> Trainer:
    torch.manual_seed(args.seed)
    model = DiT_models[args.model](
        input_size=args.image_size, in_channels=1, num_classes=10, class_dropout_prob=args.class_dropout_prob
    ).to(device)
    ema = deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0)
    return Trainer(model, ema, optimizer, device, window=[], seconds=0.0)


def train(args: argparse.Namespace, trainer: Trainer, start: int, results: Path) -> None:
    """Steps ``start`` .. ``args.steps``: a log row every --log-every steps, a checkpoint every --ckpt-every."""
    images, labels = load_digits(args.image_size)
    images, labels = images.to(trainer.device), labels.to(trainer.device)
    diffusion = create_diffusion(timestep_respacing="")  # 1000 steps, linear schedule, learned sigma
    log_path = results / LOG_NAME
    trainer.model.train()
    started = time.time()
    progress = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train")
    for step in progress:
        # Indices and timesteps come from the CPU generator whatever the device, as when the bundled model was made.
        index = torch.randint(len(images), (args.batch_size,)).to(trainer.device)
        t = torch.randint(diffusion.num_timesteps, (args.batch_size,)).to(trainer.device)
        loss = diffusion.training_losses(trainer.model, images[index], t, {"y": labels[index]})["loss"].mean()
        for group in trainer.optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        update_ema(trainer.ema, trainer.model, ema_decay(step, args.ema_decay))
        trainer.window.append(loss.item())
        if (step + 1) % args.log_every == 0:
            mean = sum(trainer.window) / len(trainer.window)
            seconds = trainer.seconds + time.time() - started
            with log_path.open("a") as f:
                f.write(f"{step + 1},{mean:.6f},{seconds:.1f}\n")  # one write: a kill cuts at most this row
            progress.set_postfix(loss=f"{mean:.4f}")
            trainer.window = []
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            checkpoint = trainer.state(args, step + 1, started)
            atomic_write(results / CHECKPOINT_NAME, partial(torch.save, checkpoint))  # never a half-written one


def write_export(args: argparse.Namespace, ema: DiT) -> None:
    weights, meta_path = export_paths(args.export)
    export_ema(ema, weights)
    meta = {"command": command_line(args), "steps": args.steps,
            "parameters": sum(p.numel() for p in ema.parameters()), "args": vars(args)}  # fmt: skip
    atomic_write(meta_path, lambda temp: temp.write_text(json.dumps(meta, indent=2) + "\n"))
    print(f"exported EMA weights to {weights} and the command to {meta_path}")


def main(args: argparse.Namespace) -> None:
    device, resume = check_args(args)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(results)  # a checkpoint or log write cut short by a kill
    trainer = build_trainer(args, device)
    log_path = results / LOG_NAME
    start = 0
    if resume is not None:
        trainer.load(resume.state)
        start = resume.state["step"]
        keep_log_rows(log_path, resume.log_rows, start)
    else:
        atomic_write(log_path, lambda temp: temp.write_text(LOG_HEADER))
    millions = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    print(f"{args.model}: {millions:.2f}M parameters, from step {start}")
    train(args, trainer, start, results)
    plot_loss(log_path, results / PLOT_NAME)
    if args.export:
        write_export(args, trainer.ema)


def cli(argv: list[str] | None = None) -> None:
    """Parse and run; a bad flag or file ends in one ``error:`` line and exit code 2, before anything is written."""
    run_cli(main, build_parser().parse_args(argv))


if __name__ == "__main__":
    cli()

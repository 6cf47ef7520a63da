"""Train a class-conditional DiT on the offline digits dataset (pixel space, no VAE).

This is how the bundled model (assets/dit_xs4_digits_ema.safetensors) was made; the exact command is in
assets/dit_xs4_digits_ema.json. Checkpoints use DiT's train.py layout ({"model", "ema", "opt", "args", "step"}), so
``sample.py --ckpt results/.../last.pt`` samples from the EMA weights, and ``--resume`` continues a stopped run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from copy import deepcopy
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from common.checkpoint import read_checkpoint_file
from common.cli import run_cli
from common.io import atomic_write, remove_stale_temps
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.digits import load_digits
from taylorseer_dit.models import DiT, DiT_models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=list(DiT_models), default="DiT-XS/4", help="DiT preset")
    parser.add_argument("--image-size", type=int, default=16, help="digits are upsampled from 8x8 to this size")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=256, help="images per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate after warm-up")
    parser.add_argument("--warmup-steps", type=int, default=300, help="linear learning-rate warm-up")
    parser.add_argument("--ema-decay", type=float, default=0.9995, help="EMA decay per step, after its warm-up")
    parser.add_argument("--class-dropout-prob", type=float, default=0.1, help="label dropout, enables CFG")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and noise")
    parser.add_argument("--results-dir", default="results/train-digits", help="checkpoints and the loss log")
    parser.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints (last.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from results-dir/last.pt")
    parser.add_argument("--export", default=None, help="also write the final EMA weights here (fp16 safetensors)")
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


def export_ema(ema: DiT, path: Path) -> None:
    """fp16 safetensors: half the size, and the rounding (~5e-4 relative) is far below what sampling notices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in ema.state_dict().items()}, str(path))


LOG_HEADER = "step,loss,seconds\n"


def truncate_loss_log(log_path: Path, step: int) -> int:
    """Keep the rows of ``log_path`` up to ``step`` (the resumed checkpoint's): a run stopped after logging rows past
    its last checkpoint would log those steps again. Returns the number of rows kept; writes a bare header if the log
    is missing."""
    rows = []
    if log_path.exists():
        with log_path.open() as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
    lines = "".join(f"{row['step']},{row['loss']},{row['seconds']}\n" for row in rows)
    atomic_write(log_path, lambda temp: temp.write_text(LOG_HEADER + lines))
    return len(rows)


def plot_loss(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log_path.open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses)
    ax.set(xlabel="step", ylabel="training loss (MSE + VB, mean of 100 steps)", yscale="log", title=png_path.stem)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    results = Path(args.results_dir)
    state = read_checkpoint_file(results / "last.pt") if args.resume else None  # fail before writing anything
    results.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(results)  # a checkpoint or log write cut short by a kill
    torch.manual_seed(args.seed)
    images, labels = load_digits(args.image_size)
    model = DiT_models[args.model](
        input_size=args.image_size, in_channels=1, num_classes=10, class_dropout_prob=args.class_dropout_prob
    )
    ema = deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0)
    diffusion = create_diffusion(timestep_respacing="")  # 1000 steps, linear schedule, learned sigma
    log_path = results / "loss.csv"
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        truncate_loss_log(log_path, start)
    else:
        log_path.write_text(LOG_HEADER)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, from step {start}")

    model.train()
    window, t0 = [], time.time()
    progress = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train")
    for step in progress:
        index = torch.randint(len(images), (args.batch_size,))
        t = torch.randint(diffusion.num_timesteps, (args.batch_size,))
        loss = diffusion.training_losses(model, images[index], t, {"y": labels[index]})["loss"].mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_ema(ema, model, ema_decay(step, args.ema_decay))
        window.append(loss.item())
        if (step + 1) % 100 == 0:
            mean = sum(window) / len(window)
            with log_path.open("a") as f:
                f.write(f"{step + 1},{mean:.6f},{time.time() - t0:.1f}\n")
            progress.set_postfix(loss=f"{mean:.4f}")
            window = []
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            checkpoint = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": optimizer.state_dict(),
                          "args": args, "step": step + 1, "rng": torch.get_rng_state()}  # fmt: skip
            atomic_write(results / "last.pt", partial(torch.save, checkpoint))  # never a half-written one
    plot_loss(log_path, results / "loss.png")
    if args.export:
        export_ema(ema, Path(args.export))
        meta = {"command": "python TaylorSeer-DiT/train.py " + " ".join(sys.argv[1:]), "steps": args.steps,
                "parameters": sum(p.numel() for p in ema.parameters()), "args": vars(args)}  # fmt: skip
        Path(args.export).with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"exported EMA weights to {args.export}")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())

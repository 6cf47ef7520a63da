"""The caching methods by name, their configs and their command-line flags (1:1 onto each config's fields).

    --method full         the plain model (no cache)
    --method taylorseer   TaylorSeer: Taylor forecasts of module outputs (--interval, --max-order, ...)
    --method fora         FORA: reuse of module outputs every N steps (TaylorSeer at order 0, bit for bit)
    --method delta-dit    Δ-DiT: a block range bypassed by its cached residual (--cached-blocks, --delta-boundary)
    --method toca         ToCa: token-wise caching (--fresh-ratio, --toca-score, --layer-schedule)
    --method duca         DuCa: ToCa steps alternating with whole-stack reuse
    --method teacache     TeaCache: whole steps skipped by the accumulated input change (--teacache-thresh)

Each tree adds the flags with its reference defaults (``add_method_args``), builds the validated config from them
(``method_config_from_args``) and a fresh per-run cache from the config (``make_cache``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, replace

import torch

from .caching import CacheMethod
from .cli import finite_float, int_range, taylorseer_fields, warn
from .delta_dit import DeltaDiTCache, DeltaDiTConfig
from .taylor_cache import TaylorCache, TaylorSeerConfig
from .teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig, load_coefficients
from .toca import SCORES, DuCaCache, ToCaCache, ToCaConfig

__all__ = [
    "METHODS",
    "MethodConfig",
    "add_method_args",
    "describe",
    "make_cache",
    "method_config_from_args",
    "method_record",
    "fora_of",
    "schedule_label",
    "teacache_coefficients_arg",
    "warn_unused_method_flags",
]

METHODS = ("full", "taylorseer", "fora", "delta-dit", "toca", "duca", "teacache")
MethodConfig = TaylorSeerConfig | DeltaDiTConfig | ToCaConfig | TeaCacheConfig | None


def add_method_args(
    parser: argparse.ArgumentParser,
    *,
    method: str = "taylorseer",
    teacache_coefficients: str = "identity",
    teacache_thresh: float = 0.4,
) -> argparse._ArgumentGroup:
    """``--method`` and the flags of the methods other than TaylorSeer's (which ``add_taylorseer_args`` adds)."""
    group = parser.add_argument_group("caching method", "which training-free method runs, and its own settings")
    group.add_argument("--method", choices=METHODS, default=method, help="caching method (full = the plain model)")
    group.add_argument(
        "--cached-blocks", type=int_range(1), default=1, help="Δ-DiT: blocks in the range bypassed by its residual"
    )
    group.add_argument(
        "--delta-boundary",
        type=finite_float(0, 1),
        default=0.5,
        help="Δ-DiT: fraction of the run before which the rear blocks are bypassed, after which the front ones",
    )
    group.add_argument(
        "--fresh-ratio", type=finite_float(0, 1), default=0.1, help="ToCa/DuCa: fraction of tokens recomputed"
    )
    group.add_argument("--toca-score", choices=SCORES, default="norm", help="ToCa/DuCa: how fresh tokens are chosen")
    group.add_argument(
        "--layer-schedule",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ToCa/DuCa: scale the fresh ratio by 1.5 - l / (depth - 1) per layer",
    )
    group.add_argument(
        "--teacache-thresh",
        type=finite_float(0),
        default=teacache_thresh,
        help="TeaCache: accumulated rescaled input change under which steps are skipped (0 = every step computed)",
    )
    group.add_argument(
        "--teacache-coefficients",
        type=teacache_coefficients_arg,
        default=teacache_coefficients,
        metavar="{" + ",".join(TEACACHE_COEFFICIENTS) + "}|FILE",
        help="TeaCache: the rescaling polynomial, a published one (flux, hunyuanvideo; identity = none) or a model's "
        'own fit: a JSON file holding its "coefficients", highest power first (DiT: fit_teacache.py)',
    )
    return group


def teacache_coefficients_arg(text: str) -> str:
    """argparse ``type=`` of --teacache-coefficients: a published name or a readable fit file, kept as given (the
    config reads it); anything else is argparse's one ``error:`` line with the reason."""
    try:
        load_coefficients(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


METHOD_FLAGS = {
    "--interval": ("taylorseer", "fora", "delta-dit", "toca", "duca"),
    "--max-order": ("taylorseer",),
    "--first-enhance": ("taylorseer", "fora", "delta-dit", "toca", "duca"),
    "--derivative-start-step": ("taylorseer",),
    "--factor-dtype": ("taylorseer", "fora"),
    "--forecaster": ("taylorseer",),
    "--hermite-scale": ("taylorseer",),
    "--full-steps": ("taylorseer", "fora"),
    "--placement": ("taylorseer", "fora"),
    "--placement-power": ("taylorseer", "fora"),
    "--full-step-list": ("taylorseer", "fora"),
    "--cached-blocks": ("delta-dit",),
    "--delta-boundary": ("delta-dit",),
    "--fresh-ratio": ("toca", "duca"),
    "--toca-score": ("toca", "duca"),
    "--layer-schedule": ("toca", "duca"),
    "--teacache-thresh": ("teacache",),
    "--teacache-coefficients": ("teacache",),
}
"""The methods that read each method flag; FORA is TaylorSeer of order 0, so it takes no --max-order."""


def warn_unused_method_flags(
    args: argparse.Namespace, parser: argparse.ArgumentParser, also_read: Sequence[str] = ()
) -> list[str]:
    """One warning per method flag set away from its default that ``--method`` does not read (the run ignores it,
    which must not go unsaid); ``also_read`` names flags the script reads anyway (e.g. a FORA comparison row's
    --interval). Call it before the script fills defaults into the flags. Returns the flags warned about."""
    unused = []
    for flag, methods in METHOD_FLAGS.items():
        name = flag.removeprefix("--").replace("-", "_")
        if args.method in methods or flag in also_read or not hasattr(args, name):
            continue
        if getattr(args, name) != parser.get_default(name):
            warn(
                f"{flag} is not a setting of --method {args.method} and is ignored: it is read by --method "
                f"{' / '.join(methods)}"
            )
            unused.append(flag)
    return unused


def method_config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MethodConfig:
    """The validated config of ``--method`` from the parsed flags (None for full); ``parser.error`` otherwise."""
    try:
        return _config(args)
    except (TypeError, ValueError) as err:
        parser.error(f"invalid --method {args.method} setting: {err}")


def _config(args: argparse.Namespace) -> MethodConfig:
    if args.method == "full":
        return None
    if args.method in ("taylorseer", "fora"):
        config = TaylorSeerConfig(**taylorseer_fields(args))
        return fora_of(config) if args.method == "fora" else config
    if args.method == "delta-dit":
        return DeltaDiTConfig(
            interval=args.interval,
            cached_blocks=args.cached_blocks,
            boundary=args.delta_boundary,
            first_enhance=args.first_enhance,
        )
    if args.method in ("toca", "duca"):
        return ToCaConfig(
            interval=args.interval,
            fresh_ratio=args.fresh_ratio,
            score=args.toca_score,
            layer_schedule=args.layer_schedule,
            first_enhance=args.first_enhance,
        )
    return TeaCacheConfig(threshold=args.teacache_thresh, coefficients=load_coefficients(args.teacache_coefficients))


def fora_of(config: TaylorSeerConfig) -> TaylorSeerConfig:
    """FORA on ``config``'s schedule (interval or placement): order 0, whose forecast is plain reuse whatever the
    forecaster, so the forecaster is reset to keep one record per FORA setting."""
    return replace(config, max_order=0, derivative_start_step=0, forecaster="taylor", hermite_scale=0.5)


# TaylorSeer fields added after result records existed: written only when set away from their defaults, so that
# records of runs made before them (which lack them) still match and their folders resume.
LATER_FIELDS = {
    "forecaster": "taylor",
    "hermite_scale": 0.5,
    "full_steps": None,
    "placement": "uniform",
    "placement_power": None,
    "full_step_list": None,
}


def make_cache(method: str, config: MethodConfig) -> CacheMethod | None:
    """A fresh per-run cache for ``method`` with ``config``; None for full compute (the plain model)."""
    if method == "full" or config is None:
        return None
    if isinstance(config, TaylorSeerConfig):
        return None if config.is_uncached else TaylorCache(config)
    if isinstance(config, DeltaDiTConfig):
        return DeltaDiTCache(config)
    if isinstance(config, ToCaConfig):
        return DuCaCache(config) if method == "duca" else ToCaCache(config)
    if isinstance(config, TeaCacheConfig):
        return TeaCache(config)
    raise TypeError(f"no cache for a {type(config).__name__}")


def method_record(method: str, config: MethodConfig) -> dict | None:
    """The method and its settings as JSON-able values, for result records (None for full compute)."""
    if config is None:
        return None
    fields = asdict(config)
    if isinstance(config, TaylorSeerConfig):
        fields = {k: v for k, v in fields.items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
        if fields.get("full_step_list") is not None:
            fields["full_step_list"] = list(fields["full_step_list"])
    if isinstance(fields.get("factor_dtype"), torch.dtype):
        fields["factor_dtype"] = str(fields["factor_dtype"]).removeprefix("torch.")
    if "coefficients" in fields:
        fields["coefficients"] = list(fields["coefficients"])
    return {"method": method, **fields}


def schedule_label(config: TaylorSeerConfig) -> str:
    """ "N=5" for the interval schedule, "K=8 late-dense" / "K=8 uniform" for a placement, "K=8 list" for a list."""
    if config.placement == "list":
        return f"K={len(config.full_step_list)} list"
    if config.full_steps is not None:
        power = (
            f" p={config.power:g}" if config.placement == "late-dense" and config.placement_power is not None else ""
        )
        return f"K={config.full_steps} {config.placement}{power}"
    return f"N={config.interval}"


def describe(method: str, config: MethodConfig) -> str:
    """A short label, e.g. "TaylorSeer N=5 O=3", "ToCa N=5 R=0.1", "TeaCache l=0.4"."""
    if config is None:
        return "full compute"
    if method in ("fora", "taylorseer"):
        name = (
            f"FORA {schedule_label(config)}"
            if method == "fora"
            else f"TaylorSeer {schedule_label(config)} O={config.max_order}"
        )
        return name if config.forecaster == "taylor" else f"{name} {config.forecaster}"
    if method == "delta-dit":
        return f"Δ-DiT N={config.interval} k={config.cached_blocks}"
    if method in ("toca", "duca"):
        return f"{'ToCa' if method == 'toca' else 'DuCa'} N={config.interval} R={config.fresh_ratio:g}"
    return f"TeaCache l={config.threshold:g}"

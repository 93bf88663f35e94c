"""`ijepa-ds` entry point: argparse with one subcommand per registered command.

A command is `(name, help, configure)` in `COMMANDS`; `configure(parser)` adds the
command's arguments and sets `func=handler` with `handler(args) -> int` (the exit code).
Commands live in their own modules (`ijepa_ds/cli/train_cmd.py` etc.) and are appended to
`COMMANDS`; they must keep heavy imports (torch, deepspeed) inside the handler so that
`--help` and `config show` stay fast. A `ConfigError` raised by any handler is printed to
stderr without a traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ijepa_ds.cli.convert_cmd import configure_convert
from ijepa_ds.cli.eval_cmd import configure_eval
from ijepa_ds.cli.launch_cmd import configure_launch
from ijepa_ds.cli.masks_cmd import configure_masks
from ijepa_ds.cli.plan_cmd import configure_plan
from ijepa_ds.cli.train_cmd import configure_train
from ijepa_ds.config import (
    Config,
    ConfigError,
    config_hash,
    dump_yaml,
    iter_fields,
    list_presets,
    load_config,
    validate_config,
    validate_paths,
)
from ijepa_ds.config.loader import preset_summary, type_name

Configure = Callable[[argparse.ArgumentParser], None]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The `NAME_OR_PATH [KEY=VALUE ...]` arguments shared by every config-driven command."""
    parser.add_argument("config", metavar="NAME_OR_PATH", help="preset name or YAML file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied last, e.g. schedule.lr=1e-3 data.crop_scale=[0.5,1.0]",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config named by `add_config_args` arguments (not validated)."""
    return load_config(args.config, args.overrides)


def _show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if not args.no_validate:
        validate_config(cfg, world_size=args.world_size)
    if args.check_paths:
        validate_paths(cfg)
    sys.stdout.write(f"# config_hash: {config_hash(cfg)}\n" if args.hash else "")
    sys.stdout.write(dump_yaml(cfg))
    return 0


def _list(args: argparse.Namespace) -> int:
    names = list_presets()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {preset_summary(name)}")
    return 0


def _fields(args: argparse.Namespace) -> int:
    infos = [f for f in iter_fields() if not args.section or f.path.startswith(args.section + ".")]
    if not infos:
        raise ConfigError(f"No config section {args.section!r}")
    for info in infos:
        default = _yaml_value(info.default)
        print(f"{info.path} ({type_name(info.type)}, default {default})\n    {info.help}")
    return 0


def _yaml_value(value: object) -> str:
    """A default as it would be written in YAML (tuples as lists, '' quoted)."""
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def configure_config(parser: argparse.ArgumentParser) -> None:
    """`config show|list|fields`."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the resolved config as YAML")
    add_config_args(show)
    show.add_argument("--world-size", type=int, default=None, help="check batch divisibility")
    show.add_argument("--check-paths", action="store_true", help="check that data.root exists")
    show.add_argument("--no-validate", action="store_true", help="skip the cross-field checks")
    show.add_argument("--hash", action="store_true", help="print the config hash first")
    show.set_defaults(func=_show)
    actions.add_parser("list", help="list the shipped presets").set_defaults(func=_list)
    fields = actions.add_parser("fields", help="document every config field")
    fields.add_argument("section", nargs="?", default="", help="only this section")
    fields.set_defaults(func=_fields)


COMMANDS: list[tuple[str, str, Configure]] = [
    ("config", "show, list and document run configs", configure_config),
    ("train", "pretrain I-JEPA (one process, torchrun, deepspeed or srun)", configure_train),
    ("convert", "convert DeepSpeed, consolidated, reference, timm weights", configure_convert),
    ("launch", "start ranks locally or submit to SLURM", configure_launch),
    ("eval", "linear probe, kNN, low-shot and PCA pictures of a target encoder", configure_eval),
    ("plan", "predict per-GPU memory of a run and whether it fits", configure_plan),
    ("masks", "statistics of one step's context/target masks", configure_masks),
]


def build_parser(
    commands: Sequence[tuple[str, str, Configure]] | None = None,
) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of `commands` (default COMMANDS)."""
    parser = argparse.ArgumentParser(prog="ijepa-ds", description="I-JEPA training on DeepSpeed.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure in COMMANDS if commands is None else commands:
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (2 for a configuration error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

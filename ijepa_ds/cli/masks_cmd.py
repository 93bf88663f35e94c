"""``ijepa-ds masks stats``: context/target token counts of one step, as training samples it.

    ijepa-ds masks stats --config vit_h14_in1k --world-size 16 [--table] [--step 0] [KEY=VALUE ...]

Samples one optimizer step's masks on ``--world-size`` ranks through the training sampler and
collator (accumulation from the config) and prints, as its last line, one JSON object:
``context_drawn_mean``, ``context_kept_mean``, ``context_kept_fraction`` (kept / drawn),
``target_kept_fraction``, ``padding_fraction`` (padded share of the encoder input), ``policy``
and the batch layout. ``--table`` prints the same numbers as a table first. Exit status 2 for a
configuration error.
"""

from __future__ import annotations

import argparse
import json


def _stats(args: argparse.Namespace) -> int:
    from ijepa_ds.config import ConfigError, load_config, validate_config
    from ijepa_ds.perf.mask_stats import format_table, mask_stats

    if args.world_size < 1 or args.step < 0:
        raise ConfigError(
            f"--world-size must be >= 1 and --step >= 0, got {args.world_size} and {args.step}"
        )
    cfg = load_config(args.config, list(args.overrides))
    validate_config(cfg, world_size=args.world_size)
    try:
        stats = mask_stats(cfg, args.world_size, args.step)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if args.table:
        print(format_table(stats), end="")
    print(json.dumps(stats.as_dict()))
    return 0


def configure_masks(parser: argparse.ArgumentParser) -> None:
    """`masks stats`."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = actions.add_parser("stats", help="token counts of one step's masks")
    stats.add_argument("--config", required=True, help="preset name or YAML path")
    stats.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. mask.group_size=64",
    )
    stats.add_argument("--world-size", type=int, default=1, help="number of ranks (default 1)")
    stats.add_argument("--step", type=int, default=0, help="optimizer step to sample (default 0)")
    stats.add_argument("--table", action="store_true", help="print a table before the JSON")
    stats.set_defaults(func=_stats)

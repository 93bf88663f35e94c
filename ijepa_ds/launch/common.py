"""What the two launchers share: the trainer arguments they pass on, and their ``python -m``
entry point (parse, run, a ``ConfigError`` as one line on stderr and exit status 2, as
``ijepa-ds`` itself does)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

AddArguments = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
Run = Callable[[argparse.Namespace], int]


def train_argv(args: argparse.Namespace) -> list[str]:
    """The ``ijepa-ds train`` arguments held by a namespace parsed with
    ``add_train_arguments`` (the launcher's own options left out)."""
    argv = ["--config", args.config, *args.overrides]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.resume_fallback:
        argv.append("--resume-fallback")
    return argv


def launcher_main(
    prog: str, add_arguments: AddArguments, run: Run, argv: Sequence[str] | None = None
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the parser ``add_arguments`` builds and
    return ``run(args)``; a ``ConfigError`` is printed as ``error: ...`` and gives 2."""
    from ijepa_ds.config import ConfigError

    parser = add_arguments(argparse.ArgumentParser(prog=prog))
    try:
        return run(parser.parse_args(argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

"""What one training run is asked to do: the typed arguments of ``ijepa-ds train``.

The CLI parses them (``cli/train_cmd``); launchers build, extend and pass them on, to a
SLURM job or to a command line (``argv``). Nothing below the CLI sees argparse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TrainArgs:
    """Arguments of one training run.

    config: preset name or YAML path; overrides: dotted ``KEY=VALUE`` overrides applied in
    order; resume: ``""`` (fresh), ``"auto"`` (newest complete checkpoint of the run folder)
    or a checkpoint folder; resume_fallback: on an unreadable newest checkpoint, take the
    previous complete one; local_rank: what the deepspeed launcher passed as ``--local_rank``
    (None when absent), which must agree with ``LOCAL_RANK``.
    """

    config: str
    overrides: tuple[str, ...] = ()
    resume: str = ""
    resume_fallback: bool = False
    local_rank: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, str) or not self.config:
            raise ValueError(f"TrainArgs.config={self.config!r}: expected a preset name or path")
        object.__setattr__(self, "overrides", tuple(self.overrides))  # malformed: load_config

    def with_overrides(self, *extra: str) -> TrainArgs:
        """A copy with ``extra`` appended (later overrides win)."""
        return replace(self, overrides=(*self.overrides, *extra))

    def argv(self) -> list[str]:
        """The ``ijepa-ds train`` command-line arguments that parse back to these (the
        launcher-set ``local_rank`` left out: each rank's launcher adds its own)."""
        argv = ["--config", self.config, *self.overrides]
        if self.resume:
            argv += ["--resume", self.resume]
        if self.resume_fallback:
            argv.append("--resume-fallback")
        return argv

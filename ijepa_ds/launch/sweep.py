"""``--sweep KEY=V1,V2``: the grid of runs one ``launch slurm`` submission makes (a job array).

The key ``config`` sweeps the preset / YAML file itself; any other key is a dotted override
appended after the user's own, so the swept value wins.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ijepa_ds.config import ConfigError


def split_values(text: str) -> list[str]:
    """Split ``a,[1,2],b`` at the commas outside brackets: ``['a', '[1,2]', 'b']``."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return values + [current]


def expand_sweep(sweeps: Sequence[str]) -> list[list[str]]:
    """``["schedule.lr=1e-3,5e-4", "seed=0,1"]`` -> the 4 override lists of the grid.

    The key ``config`` sweeps the preset / YAML file itself (``config=NAME``).
    """
    axes = []
    for item in sweeps:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--sweep {item!r}: expected KEY=V1,V2,...")
        axes.append([f"{key}={value}" for value in split_values(values)])
    return [list(combo) for combo in itertools.product(*axes)]


def sweep_runs(
    config: str, overrides: Sequence[str], sweeps: Sequence[str]
) -> list[tuple[str, list[str]]]:
    """(config, overrides) of every member of the grid; one member, the arguments as given,
    without ``sweeps``."""
    runs = []
    for member in expand_sweep(sweeps) if sweeps else [[]]:
        chosen, extra = config, list(overrides)
        for item in member:
            key, _, value = item.partition("=")
            if key == "config":
                chosen = value
            else:
                extra.append(item)
        runs.append((chosen, extra))
    return runs

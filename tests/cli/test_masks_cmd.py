"""``ijepa-ds masks stats``: numbers against an independent computation; world-size invariance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ijepa_ds.cli.main import build_parser, main
from ijepa_ds.cli.masks_cmd import configure_masks
from ijepa_ds.config import load_config
from ijepa_ds.masks import build_mask_sampler_from_config
from ijepa_ds.perf.mask_stats import step_micro_batches

# 7x7 grid, 32 samples a step in micro-batches of 8, groups of 4: a micro-batch spans 2 groups.
SMALL = ["data.batch_size=8", "data.global_batch_size=32", "mask.group_size=4"]
GLOBAL, MICRO, GROUP, STEP = 32, 8, 4, 3


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    parser = build_parser([("masks", "mask statistics", configure_masks)])
    args = parser.parse_args(["masks", "stats", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out.strip().splitlines()


def _drawn(cfg) -> np.ndarray:
    """Context size of every sample of STEP (block minus targets), from the layout corners on a
    bool grid, not through the sampler's packed rows: [G]."""
    sampler = build_mask_sampler_from_config(cfg, GLOBAL)
    layout = sampler.step_layout(STEP)
    (ph, pw), (eh, ew) = layout.pred_hw, layout.enc_hw
    sizes = []
    for b in range(GLOBAL):
        grid = np.zeros((7, 7), dtype=bool)
        (top, left) = layout.enc_corners[b, 0]
        grid[top : top + eh, left : left + ew] = True
        for t, lft in layout.pred_corners[b]:
            grid[t : t + ph, lft : lft + pw] = False
        sizes.append(int(grid.sum()))
    return np.array(sizes)


def _expected(policy: str, drawn: np.ndarray, world_size: int) -> dict:
    if policy == "global_min":
        kept = np.full_like(drawn, drawn.min())
    elif policy == "group_min":
        kept = np.repeat(drawn.reshape(-1, GROUP).min(axis=1), GROUP)
    else:
        kept = drawn
    # micro-batch m of rank r holds step-local samples (m * W + r) * b + [0, b); each is padded
    # to its longest kept context
    micro_batches = kept.reshape(GLOBAL // (MICRO * world_size), world_size, MICRO)
    widths = micro_batches.max(axis=-1, keepdims=True)
    padded = (widths - micro_batches).sum()
    # the student's length chunks (model.context_chunks=4 where masks can pad): each micro-batch
    # sorted by length, cut in 4 near-equal parts, each padded to its own longest
    chunks = 1 if policy == "global_min" else 4
    parts = [
        part
        for mb in micro_batches.reshape(-1, MICRO)
        for part in np.array_split(np.sort(mb), chunks)
    ]
    computed = sum(part.max() * len(part) for part in parts)
    return {
        "context_drawn_mean": drawn.mean(),
        "context_kept_mean": kept.mean(),
        "context_kept_fraction": kept.sum() / drawn.sum(),
        "padding_fraction": padded / (widths.sum() * MICRO),
        "computed_padding_fraction": 1.0 - kept.sum() / computed,
    }


@pytest.mark.parametrize("policy", ["global_min", "group_min", "keep_all"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_stats_match_an_independent_computation(capsys, policy, world_size):
    overrides = [*SMALL, f"mask.context_policy={policy}"]
    code, lines = _run(
        capsys, "--config", "fmnist_tiny", f"--world-size={world_size}", f"--step={STEP}",
        *overrides,
    )  # fmt: skip
    assert code == 0
    got = json.loads(lines[-1])
    drawn = _drawn(load_config("fmnist_tiny", overrides))
    for key, want in _expected(policy, drawn, world_size).items():
        assert got[key] == pytest.approx(want, rel=1e-12), key
    assert got["target_kept_fraction"] == 1.0 and got["policy"] == policy
    assert got["accumulation"] == GLOBAL // (MICRO * world_size)
    if policy != "global_min":
        assert (
            got["context_kept_fraction"]
            > _expected("global_min", drawn, 1)["context_kept_fraction"]
        )
    assert (got["padding_fraction"] > 0) == (policy != "global_min")
    assert got["computed_padding_fraction"] <= got["padding_fraction"]


def test_one_chunk_computes_the_collated_padding(capsys):
    overrides = [*SMALL, "mask.context_policy=keep_all", "model.context_chunks=1"]
    _, lines = _run(capsys, "--config", "fmnist_tiny", f"--step={STEP}", *overrides)
    got = json.loads(lines[-1])
    assert got["computed_padding_fraction"] == pytest.approx(got["padding_fraction"], rel=1e-12)
    assert got["padding_fraction"] > 0


@pytest.mark.parametrize("policy", ["global_min", "group_min", "keep_all"])
def test_world_size_does_not_change_the_masks(policy):
    cfg = load_config("fmnist_tiny", [*SMALL, f"mask.context_policy={policy}"])
    seen = []
    for world_size in (1, 2, 4):
        per_position = {}
        for pos, masks_enc, masks_pred in step_micro_batches(cfg, world_size, STEP):
            for i, p in enumerate(pos.tolist()):
                rows = [m[i][m[i] >= 0].tolist() for m in masks_enc + masks_pred]
                per_position[p] = rows
        assert sorted(per_position) == list(range(STEP * GLOBAL, (STEP + 1) * GLOBAL))
        seen.append(per_position)
    assert seen[0] == seen[1] == seen[2]


def test_table_before_the_json_and_errors(capsys):
    code, lines = _run(capsys, "--config", "fmnist_tiny", "--table", *SMALL)
    assert code == 0 and lines[0].split() == ["policy", "group_min"]
    assert json.loads(lines[-1])["padding_fraction"] >= 0 and len(lines) > 5
    assert main(["masks", "stats", "--config", "fmnist_tiny", "mask.sampler=reference"]) == 2
    assert "needs mask.sampler=step_seeded" in capsys.readouterr().err
    assert main(["masks", "stats", "--config", "fmnist_tiny", "--world-size=3"]) == 2
    assert "world size 3" in capsys.readouterr().err


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`

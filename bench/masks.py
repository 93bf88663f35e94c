"""Mask sampler timing: one 128-image micro-batch on one CPU core.

Run from the repository root::

    OMP_NUM_THREADS=1 python -m bench.masks --repeats 300

Every timed call is the first of a new optimizer step, so the fixed sampler's whole-step work
(block geometry and context sizes of all ``global_batch`` samples, needed for the step's common
K_enc) is never served from its one-step cache; the "step cached" rows time a second
micro-batch of the same step, as gradient accumulation in one worker would call it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch size their thread pools

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ijepa_ds.masks import build_mask_sampler

GRIDS = {"224/14 (16x16)": (16, 16), "224/16 (14x14)": (14, 14)}
GLOBAL_BATCHES = (128, 2048)
MICRO_BATCH = 128
WARMUP = 10


def time_sampler(kind: str, grid, global_batch: int, repeats: int, cached: bool) -> dict:
    """Seconds per micro-batch call (median, p90) and the mean K_enc / K_pred it returned."""
    sampler = build_mask_sampler(kind, grid_size=grid, global_batch_size=global_batch, seed=0)
    ranks = global_batch // MICRO_BATCH
    times, k_enc, k_pred, full = [], [], [], []
    for i in range(WARMUP + repeats):
        first = i * global_batch + (i % ranks) * MICRO_BATCH  # a new step, a rotating rank
        if cached:
            sampler(np.arange(first, first + MICRO_BATCH))
            first = i * global_batch + ((i + 1) % ranks) * MICRO_BATCH
        positions = np.arange(first, first + MICRO_BATCH)
        start = time.perf_counter()
        masks_enc, masks_pred = sampler(positions)
        elapsed = time.perf_counter() - start
        if i >= WARMUP:
            times.append(elapsed)
            k_enc.append(masks_enc[0].shape[1])
            k_pred.append(masks_pred[0].shape[1])
            full.append(mean_context(sampler, positions))
    return {
        "kept": f"{100 * np.mean(k_enc) / np.mean(full):.0f}%" if full[0] else "n/a",
        "median_ms": 1e3 * float(np.median(times)),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
        "k_enc": float(np.mean(k_enc)),
        "k_pred": float(np.mean(k_pred)),
    }


def mean_context(sampler, positions: np.ndarray) -> float:
    """Untimed: mean context size before equalising over the step's samples, for the fixed
    sampler (0.0 for the reference-compatible one, which keeps its untrimmed sizes internal)."""
    if not hasattr(sampler, "step_layout"):
        return 0.0
    layout = sampler.step_layout(int(positions[0]) // sampler.global_batch_size)
    rows = sampler.context_rows(
        layout.pred_corners, layout.enc_corners, layout.pred_hw, layout.enc_hw
    )
    return float(np.bitwise_count(rows).sum(axis=(-2, -1)).mean())


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per row")
    parser.add_argument("--out", type=Path, default=Path("bench/results/masks.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = [
        "| grid | global batch | sampler | median ms | p90 ms | mean K_enc | K_pred | K_enc / "
        "mean context |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cases = [("step_seeded", False), ("step_seeded", True), ("reference", False)]
    for grid_name, grid in GRIDS.items():
        for global_batch in GLOBAL_BATCHES:
            for kind, cached in cases:
                if cached and global_batch == MICRO_BATCH:
                    continue  # one micro-batch per step: nothing to reuse
                r = time_sampler(kind, grid, global_batch, args.repeats, cached)
                label = kind + (" (step cached)" if cached else "")
                rows.append(
                    f"| {grid_name} | {global_batch} | {label} | {r['median_ms']:.2f} | "
                    f"{r['p90_ms']:.2f} | {r['k_enc']:.1f} | {r['k_pred']:.1f} | {r['kept']} |"
                )
                print(rows[-1], flush=True)
    load_after = os.getloadavg()
    report = "\n".join(
        [
            "# Mask sampler timing (one 128-image micro-batch, one CPU core)",
            "",
            "Command (repository root): `OMP_NUM_THREADS=1 python -m bench.masks "
            f"--repeats {args.repeats}`",
            "",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores (a 2-core CPU VM shared with other "
            f"jobs; 1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
            "after), "
            f"Python {platform.python_version()}, numpy {np.__version__}, "
            f"torch {torch.__version__}, "
            "`torch.set_num_threads(1)`.",
            "",
            f"{args.repeats} timed calls per row after {WARMUP} warm-up calls; each call is a "
            'new optimizer step (cold step cache) unless marked "step cached". Global batch '
            "2048 = a 16-rank step: the fixed sampler sizes the context (K_enc) over all 2048 "
            "samples of the step; the reference-compatible one over the micro-batch only. "
            '"K_enc / mean context" is the share of the context patches (block minus '
            "targets) that survives equalising to the step's shortest context.",
            "",
            *rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

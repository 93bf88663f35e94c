"""Shared pieces of the benchmarks: machine description, CPU peak FLOP/s, timing, configs.

Benchmarks run on shared machines, so every comparison is measured side by side in one run
(interleaved repetitions) and reported as a ratio; absolute numbers always come with the
machine they were taken on (``machine_info``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch sizes its thread pool

import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# A ViT-S/16-sized student on synthetic RGB images: the CPU benchmark model.
# The base preset is fmnist_tiny, whose explicit dims must be overridden too.
VIT_S16 = [
    "model.name=vit_small",
    "model.embed_dim=384",
    "model.depth=12",
    "model.num_heads=6",
    "model.mlp_ratio=4.0",
    "model.patch_size=16",
    "model.in_chans=3",
    "model.pred_depth=6",
    "model.pred_emb_dim=384",
    "model.pred_num_heads=6",
    "mask.min_keep=4",
    "data.dataset=synthetic",
    "data.normalize_mean=[0.5,0.5,0.5]",
    "data.normalize_std=[0.25,0.25,0.25]",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
    "logging.tensorboard=false",
    "logging.jsonl=false",
    "checkpoint.save_at_end=false",
]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_info() -> dict[str, str]:
    """CPU model, core count, load average now, versions: the header of every result file."""
    import deepspeed

    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f" {f}" in flags]
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "isa": ",".join(isa),
        "load_average": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "threads_per_process": str(torch.get_num_threads()),
    }


def machine_header(start: dict[str, str], end_load: str) -> str:
    """Markdown lines naming the machine, with the load average at start and end."""
    return (
        f"Machine: {start['cpu']}, {start['cores']} cores ({start['isa']}), shared with other "
        f"jobs; 1/5/15-min load average {start['load_average']} at start, {end_load} at end. "
        f"Python {start['python']}, torch {start['torch']}, DeepSpeed {start['deepspeed']}, "
        f"{start['threads_per_process']} thread(s) per process.\n"
    )


def report_header(title: str, start: dict[str, str], command: str, seconds: float) -> str:
    """A result file's title, machine line (load at start and now) and the command that made
    it, with its wall time: the first lines of every ``bench/results`` report."""
    return (
        f"# {title}\n\n"
        + machine_header(start, load_average())
        + f"\nCommand (repository root): `{command}` ({seconds:.0f} s)\n\n"
    )


def matmul_peak_flops(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 7):
    """Best-of-``repeats`` FLOP per CPU-second of one ``size``-square matmul.

    The CPU's practical peak for MFU: the best a large GEMM reaches here, measured in the
    same run as the throughput it is compared with. Timed in this process's CPU time
    (``time.process_time``; one thread per process), so that other jobs on a shared machine
    lower it much less than they lower wall-clock rates.
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2.0 * size**3 / best


def interleaved(variants: dict[str, Callable[[], None]], repeats: int, warmup: int = 1):
    """Time every variant ``repeats`` times, round-robin (ABCABC...), after ``warmup`` rounds.

    Interleaving spreads the load of a shared machine evenly over the variants. Returns
    ``{name: [(wall_s, cpu_s), ...]}`` with this process's CPU time (``time.process_time``),
    which is much less sensitive to other jobs on the machine than wall time.
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for round_index in range(warmup + repeats):
        for name, fn in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if round_index >= warmup:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_spread(base: list[float], other: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios base[i] / other[i] (speed-up of other)."""
    ratios = [b / o for b, o in zip(base, other)]
    return statistics.median(ratios), min(ratios), max(ratios)


def run_on_ranks(run: Callable[[object], str], out: str = "") -> None:
    """Start the process group, call ``run(dist_env)`` on every rank, then on rank 0 print its
    text under the machine header (and write it to ``out``); the group is destroyed after."""
    from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
    from ijepa_ds.distributed import detect_dist_env

    env = detect_dist_env()
    init_distributed(env)
    start = machine_info()
    text = run(env)
    if env.rank == 0:
        text = machine_header(start, load_average()) + "\n" + text
        print(text)
        if out:
            write_result(out, text)
    shutdown_distributed()


def write_result(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")

"""Scale rehearsal: the real ``vit_h14_in1k`` preset on 2 CPU ranks under ZeRO-3, and its whole
checkpoint life-cycle, through the product's own entry points.

    python bench/scale_rehearsal.py [--root DIR] [--only train,offload,resume,elastic,convert,vitg]

Every phase is one real command (``torchrun ... -m ijepa_ds train`` or ``ijepa-ds convert``),
run alone on the machine. Memory is each rank's resident set, sampled every 0.5 s from
``/proc`` (psutil) over the process tree, and its kernel high-water mark. Overrides touch only
batch size, steps, data and checkpoint cadence (plus the ZeRO-3 JSON and activation
checkpointing, which the rehearsal is about). Writes ``bench/results/scale_rehearsal.json``;
``bench/results/scale_rehearsal.md`` is written by hand from it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the plan phase imports the package of this checkout
RESULTS = REPO / "bench" / "results" / "scale_rehearsal.json"
GIB = 1024.0**3

COMMON = [
    "data.dataset=synthetic", "data.synthetic_size=64", "data.batch_size=1",
    "data.global_batch_size=2", "data.num_workers=0", "data.pin_memory=false",
    "model.act_ckpt_encoder=1", "model.act_ckpt_predictor=1", "checkpoint.every_minutes=0",
    "logging.log_every=1", "eval.health_every_steps=0", "eval.pretrain_val_every_epochs=0",
]  # fmt: skip
EXTRA: list[str] = []  # --extra
SAVED_LINE = re.compile(r"saved (\S+) \((\w+)\) in ([\d.]+) s")


class TreeSampler:
    """Peak RSS and peak anonymous RSS (bytes) of each process in a tree, sampled every
    ``period`` seconds. Anonymous memory is RSS less its file-backed pages: a memory-mapped
    checkpoint's pages count in RSS while read, yet they are page cache the kernel can drop."""

    def __init__(self, root_pid: int, period: float = 0.5):
        self.root, self.period, self.peaks, self.anon = psutil.Process(root_pid), period, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    info = proc.memory_info()
                    name = " ".join(proc.cmdline()[1:4])
                except psutil.Error:
                    continue
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, (0, ""))[0], info.rss), name
                anon = info.rss - info.shared
                self.anon[proc.pid] = max(self.anon.get(proc.pid, 0), anon)
            time.sleep(self.period)

    def stop(self) -> tuple[list[float], list[float]]:
        """(peak RSS, peak anonymous RSS) in GiB of the processes that held more than 256 MiB,
        largest first."""
        self._stop.set()
        self._thread.join()
        big = [pid for pid, (p, _) in self.peaks.items() if p > 2**28]
        rss = sorted((self.peaks[pid][0] / GIB for pid in big), reverse=True)
        return rss, sorted((self.anon[pid] / GIB for pid in big), reverse=True)


def run(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (its output to ``log``); wall time, exit code and per-process peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = TreeSampler(proc.pid)
        code = proc.wait()
    peaks, anon = sampler.stop()
    row = {"cmd": " ".join(cmd), "rc": code, "wall_s": time.perf_counter() - start,
           "peak_rss_gib": peaks, "peak_anon_gib": anon, "log": str(log)}  # fmt: skip
    print(
        f"  rc {code}, {row['wall_s']:.0f} s, peak RSS {[round(p, 2) for p in peaks]} GiB, "
        f"anonymous {[round(p, 2) for p in anon]} GiB"
    )
    return row


def parse_run(run_dir: Path, log: Path) -> dict:
    """Losses (full precision) and step end times from ``metrics.jsonl``; saves from the log."""
    saves = [
        {"folder": m.group(1), "reason": m.group(2), "s": float(m.group(3))}
        for m in map(SAVED_LINE.search, log.read_text().splitlines())
        if m
    ]
    metrics = run_dir / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    )
    rows = [r for r in rows if "loss" in r]
    return {"losses": {r["step"]: r["loss"] for r in rows}, "saves": saves,
            "step_end_times": {r["step"]: r["time"] for r in rows}}  # fmt: skip


def folder_bytes(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else (path.stat().st_size if path.exists() else 0)
    )


def train(
    root: Path,
    name: str,
    steps: int,
    nproc: int = 2,
    extra=(),
    resume=None,
    config: str = "vit_h14_in1k",
    keep: bool = False,
) -> dict:
    """One training run; its step folders are measured, then removed unless ``keep`` (the
    source of the resume and conversion phases): real-size checkpoints fill the disk."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "ijepa_ds", "train", "--config", config,
           *COMMON, "deepspeed.config=zero3", f"schedule.max_steps={steps}",
           "checkpoint.every_steps=2", f"logging.output_dir={root}", f"logging.run_name={name}",
           *extra, *EXTRA]  # fmt: skip
    if resume:
        cmd += ["--resume", str(resume)]
    row = run(cmd, root / f"{name}.log")
    row.update(parse_run(root / name, root / f"{name}.log"))
    for save in row["saves"]:
        save["bytes"] = folder_bytes(Path(save["folder"]))
        if not keep:
            shutil.rmtree(save["folder"], ignore_errors=True)
    return row


def convert(root: Path, src: Path, dst: Path, kind: str, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "ijepa_ds", "convert", "--to", kind, *extra, str(src), str(dst)]
    row = run(cmd, root / f"convert-{dst.name}.log")
    row["bytes"] = folder_bytes(dst)
    dst.unlink(missing_ok=True)  # measured, not kept: a real-size run's outputs fill the disk
    return row


def planned(
    config: str, world: int, overrides: list[str], gpu_mem: float = 24.0, device: str = "cuda"
) -> dict:
    """``ijepa-ds plan``'s per-rank terms (GiB) for one configuration."""
    from ijepa_ds.config import load_config, validate_config
    from ijepa_ds.perf.plan import plan

    cfg = load_config(config, overrides)
    validate_config(cfg, world_size=world)
    est = plan(cfg, world, gpu_mem, device=device).estimate
    out = {k: v / GIB for k, v in est.as_dict().items()}
    out.update({f"phase_{k}": v / GIB for k, v in est.phase_peaks().items()})
    return out


def rehearsal_plans() -> dict:
    """The planner for each measured configuration (same overrides as the runs), for CPU
    ranks (``--device cpu``): the process and rank 0's target copy at a save count."""
    base = [*COMMON, "deepspeed.config=zero3", *EXTRA]
    offload = [*base, "deepspeed.offload_optimizer=true"]
    return {
        "zero3": planned("vit_h14_in1k", 2, base, device="cpu"),
        "zero3_offload": planned("vit_h14_in1k", 2, offload, device="cpu"),
        "zero3_1_rank": planned("vit_h14_in1k", 1, base, device="cpu"),
        "vitg_depth4": planned("vit_g16_in22k", 2, [*base, "model.depth=4"], device="cpu"),
    }


def vitg_plan_table(gpu_mem: float = 80.0) -> list[dict]:
    """ViT-G/16 at the paper's global batch 2048 on 16/32/64 GPUs: modelled peak per GPU."""
    rows = []
    for world in (16, 32, 64):
        for batch in sorted({2048 // world, 16}, reverse=True):
            for stage in (1, 2, 3):
                for ckpt in (0, 1):
                    for offload in (False, True):
                        overrides = [
                            "data.dataset=synthetic", f"data.batch_size={batch}",
                            f"deepspeed.config=zero{stage}", f"model.act_ckpt_encoder={ckpt}",
                            f"model.act_ckpt_predictor={ckpt}",
                            f"deepspeed.offload_optimizer={str(offload).lower()}",
                        ]  # fmt: skip
                        peak = planned("vit_g16_in22k", world, overrides, gpu_mem)["peak"]
                        rows.append(
                            {
                                "world": world,
                                "batch": batch,
                                "stage": stage,
                                "act_ckpt": ckpt,
                                "offload": offload,
                                "peak_gib": peak,
                            }
                        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/ijepa-scale")
    parser.add_argument("--only", default="train,offload,resume,elastic,convert,vitg,plan")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides (smoke runs)")
    args = parser.parse_args()
    EXTRA.extend(args.extra)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    step2 = root / "zero3" / "checkpoints" / "step_00000002"
    offload = ["deepspeed.offload_optimizer=true"]
    vitg_step = root / "vitg" / "checkpoints" / "step_00000002"
    steps = {
        "train": {"train_zero3": lambda: train(root, "zero3", 3, keep=True)},
        "offload": {"train_zero3_offload": lambda: train(root, "zero3_offload", 3, extra=offload)},
        "resume": {"resume_2_ranks": lambda: train(root, "resumed", 3, resume=step2)},
        "elastic": {"elastic_1_rank": lambda: train(root, "elastic", 3, nproc=1, resume=step2)},
        "convert": {
            "convert_consolidated": lambda: convert(root, step2, root / "h14.pt", "consolidated"),
            "convert_consolidated_no_opt": lambda: convert(
                root, step2, root / "h14-weights.pt", "consolidated", "--no-optimizer"
            ),
            "convert_reference": lambda: convert(root, step2, root / "h14.pth.tar", "reference"),
            "convert_timm": lambda: convert(root, step2, root / "h14-timm.safetensors", "timm"),
        },
        "vitg": {
            "vitg_depth4": lambda: train(
                root, "vitg", 3, extra=["model.depth=4"], config="vit_g16_in22k", keep=True
            ),
            "vitg_convert": lambda: convert(root, vitg_step, root / "g16-timm.safetensors", "timm"),
        },
        "plan": {"plans": rehearsal_plans, "vitg_plan_80gb": vitg_plan_table},
    }
    for phase in args.only.split(","):
        for key, measure in steps[phase].items():
            results[key] = measure()
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")  # a later crash loses nothing
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

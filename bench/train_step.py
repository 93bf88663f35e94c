"""End-to-end training throughput, MFU, per-rank memory and time to first step, ZeRO 0-3.

Run from the repository root (2 ranks, CPU, gloo)::

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 \\
        bench/train_step.py --image-size 224 --batch 8 --steps 4 \\
        --out bench/results/train_step.md

For each ZeRO stage the real trainer runs ``train_loop`` (data loading, masks, target and
student forward, backward, optimizer step, EMA, per-step bookkeeping) for one first step and
``--steps`` timed steps. Per-rank throughput is images per second of wall time (median step,
data loading included); MFU divides the model FLOPs of those images (``ijepa_ds.perf.flops``,
with the batches' own token counts) by the matmul peak of one core measured in the same run
(each rank runs one thread). The loop's host synchronisation (``_global_sum``, the step's one
all-reduce of loss sum, count and non-finite flag; ``_any_rank_nonfinite`` too, which only
``loss.on_nonfinite=skip`` calls) is timed by wrapping it. Memory: tensors
held after the steps plus the allocator peak of one more profiled step
(``bench/memory_probe.py``), and the process's maximum RSS.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import resource  # noqa: E402

import common  # noqa: E402  (sets OMP_NUM_THREADS, puts the repo on sys.path)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from memory_probe import allocation_peak, held_bytes  # noqa: E402

import ijepa_ds.train.loop as loop  # noqa: E402
from ijepa_ds.backend.comm import init_distributed, shutdown_distributed  # noqa: E402
from ijepa_ds.backend.ds_config import build_ds_config  # noqa: E402
from ijepa_ds.config import load_config  # noqa: E402
from ijepa_ds.distributed import detect_dist_env  # noqa: E402
from ijepa_ds.perf.flops import mfu, shape_from_config, step_flops  # noqa: E402
from ijepa_ds.train.step import compute_loss, move_batch  # noqa: E402
from ijepa_ds.train.trainer import build_loader, build_trainer  # noqa: E402


class SyncTimer:
    """Wraps a function of ``ijepa_ds.train.loop`` and sums the seconds spent in it."""

    def __init__(self, name: str):
        self.name, self.original, self.seconds, self.calls = name, getattr(loop, name), 0.0, 0
        setattr(loop, name, self)

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            return self.original(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


class StepRecorder:
    """A train_loop hook keeping each step's wall time, data time and token counts."""

    def __init__(self):
        self.steps: list[dict] = []
        self.last, self.last_cpu = time.perf_counter(), time.process_time()
        self.first_done = 0.0  # perf_counter() at the end of the first step

    def __call__(self, step: int, info: dict, tensors) -> bool:
        now, cpu = time.perf_counter(), time.process_time()
        _, masks_enc, masks_pred, _ = tensors
        self.steps.append(
            {
                "wall": now - self.last,
                "cpu": cpu - self.last_cpu,
                "data": info["data_time"],
                "k_enc": masks_enc[0].shape[1],
                "k_pred": masks_pred[0].shape[1],
            }
        )
        self.last, self.last_cpu = now, cpu
        self.first_done = self.first_done or now
        return False


def peak_memory(trainer) -> float:
    """Tensors held now plus the allocator peak of one more micro-step (bytes)."""
    held = sum(v for k, v in held_bytes(trainer.engine, trainer.target).items() if k != "other")
    batch = next(iter(build_loader(trainer, 0)))
    imgs, _, _, masks_enc, masks_pred = move_batch(batch, trainer.device)
    cfg = trainer.cfg

    def step():
        loss, _ = compute_loss(
            trainer.engine, trainer.target, imgs, masks_enc, masks_pred, cfg.loss.kind,
            cfg.optim.precision,
        )  # fmt: skip
        trainer.engine.backward(loss)
        trainer.engine.step()

    peak, _, _ = allocation_peak(step)
    return held + peak


def run_stage(env, stage: int, args, peak_flops: float) -> dict:
    overrides = common.VIT_S16 + [
        f"data.crop_size={args.image_size}",
        f"data.batch_size={args.batch}",
        f"data.global_batch_size={args.batch * env.world_size}",
        f"data.synthetic_size={args.batch * env.world_size * (args.steps + 2)}",
        f"optim.precision={args.precision}",
        f"deepspeed.config=zero{stage}",
        f"schedule.max_steps={args.steps + 1}",
        "schedule.epochs=1",
        "schedule.warmup_epochs=0",
    ]
    cfg = load_config("fmnist_tiny", overrides)
    built, built_cpu = time.perf_counter(), time.process_time()
    trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
    timers = [SyncTimer("_any_rank_nonfinite"), SyncTimer("_global_sum")]
    recorder = StepRecorder()
    recorder.last, recorder.last_cpu = built, built_cpu
    loop.train_loop(trainer, 0, hooks=[recorder])
    for timer in timers:
        setattr(loop, timer.name, timer.original)
    timed = recorder.steps[1:]
    wall = common.median([s["wall"] for s in timed])
    cpu = common.median([s["cpu"] for s in timed])
    k_enc = sum(s["k_enc"] for s in timed) / len(timed)
    k_pred = sum(s["k_pred"] for s in timed) / len(timed)
    flops = step_flops(shape_from_config(cfg, k_enc, k_pred)).model
    img_s = args.batch / wall
    result = {
        "first_step": recorder.steps[0]["wall"],
        "since_start": recorder.first_done - START,
        "step": wall,
        "cpu": cpu,
        "mfu_cpu": mfu(args.batch / cpu, flops, peak_flops),
        "data": common.median([s["data"] for s in timed]),
        "img_s": img_s,
        "tokens_s": img_s * (args.image_size // 16) ** 2,
        "mfu": mfu(img_s, flops, peak_flops),
        "sync_ms": 1e3 * sum(t.seconds for t in timers) / len(recorder.steps),
        "memory": peak_memory(trainer),
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0,
        "k": (k_enc, k_pred),
    }
    del trainer
    dist.barrier()
    return result


def one_at_a_time(fn):
    """Run ``fn`` on each rank in turn (the others wait in a barrier); returns the max."""
    best = 0.0
    for rank in range(dist.get_world_size()):
        if rank == dist.get_rank():
            best = fn()
        dist.barrier()
    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, best)
    return max(values)


def allreduce_latency(repeats: int = 200) -> float:
    """Median seconds of the loop's non-finite check alone (1-element all-reduce + item())."""
    loss = torch.ones(())
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        loop._any_rank_nonfinite(loss)
        times.append(time.perf_counter() - start)
    return common.median(times)


def gather(result: dict) -> list[dict]:
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, result)
    return out


def format_results(results: dict, args, first_step_s: float, peak: float) -> str:
    lines = [
        f"ViT-S/16 student (width 384, depth 12; predictor 384 x 6) on synthetic "
        f"{args.image_size} px images ({(args.image_size // 16) ** 2} patches), batch "
        f"{args.batch} per rank, 2 ranks, {args.precision}, `data.num_workers=0`; 1 first step "
        f"+ {args.steps} timed steps per stage. Matmul peak of one core (fp32 1024^3 GEMM, "
        f"best of 7 in CPU time, this run, one rank at a time): {peak / 1e9:.1f} GFLOP/s. "
        f"Time from process start to the end of the first optimizer step (first stage, imports and "
        f"process-group start included): {first_step_s:.1f} s.",
        "",
        "| ZeRO | img/s per rank | patch tokens/s per rank | median step s (wall) | CPU s/step "
        "| data s/step | MFU per rank (wall, CPU time) | host-sync ms/step | build + first step "
        "s | peak tensor MiB per rank (rank 0, rank 1) | max RSS MiB (rank 0) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage, per_rank in results.items():
        r = per_rank[0]
        mem = ", ".join(f"{p['memory'] / 2**20:.0f}" for p in per_rank)
        lines.append(
            f"| {stage} | {r['img_s']:.2f} | {r['tokens_s']:.0f} | {r['step']:.2f} | "
            f"{r['cpu']:.2f} | {r['data']:.3f} | {100 * r['mfu']:.1f}%, "
            f"{100 * r['mfu_cpu']:.1f}% | {r['sync_ms']:.2f} | "
            f"{r['first_step']:.1f} | {mem} | {r['max_rss'] / 2**20:.0f} |"
        )
    k_enc, k_pred = next(iter(results.values()))[0]["k"]
    lines.append(f"\nMean tokens per mask: K_enc {k_enc:.1f}, K_pred {k_pred:.1f}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--stages", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    env = detect_dist_env()
    init_distributed(env)
    start = common.machine_info()
    peak = one_at_a_time(common.matmul_peak_flops)
    sync_latency = allreduce_latency()
    results = {stage: gather(run_stage(env, stage, args, peak)) for stage in args.stages}
    first_step_s = results[args.stages[0]][0]["since_start"]
    if env.rank == 0:
        text = common.machine_header(start, common.load_average()) + "\n"
        text += format_results(results, args, first_step_s, peak)
        text += (
            f"The non-finite check alone (`_any_rank_nonfinite`: 1-element gloo all-reduce + "
            f"`.item()`), ranks aligned by a barrier first: median {1e6 * sync_latency:.0f} us "
            "per call (200 calls).\n"
        )
        print(text)
        if args.out:
            common.write_result(args.out, text)
    shutdown_distributed()


if __name__ == "__main__":
    main()

"""Checkpoint save/load time and bytes for a ViT-S/16-sized run, against a plain torch.save.

Usage (repository root; spawns 2 CPU ranks with torchrun per ZeRO stage):

    python -m bench.checkpoint --stages 1 3 --repeats 3 --out bench/results/checkpoint.md

For each stage: build the real trainer (ViT-S/16 encoder: width 384, depth 12, 6 heads;
predictor 6 x 384; synthetic 64x64 images -> a 4x4 patch grid keeps the one training step
cheap), take one step so Adam moments exist, then time ``save_checkpoint`` (all ranks, atomic
publish), ``load_checkpoint`` into a fresh engine, and ``torch.save``/``torch.load`` of the same
tensors (student fp32 + Adam moments + target) from rank 0 into one file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = [
    "data.dataset=synthetic",
    "data.synthetic_size=64",
    "data.crop_size=64",
    "data.normalize_mean=[0.5,0.5,0.5]",
    "data.normalize_std=[0.25,0.25,0.25]",
    "data.batch_size=4",
    "data.global_batch_size=8",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
    "model.name=vit_small",
    "model.patch_size=16",
    "model.in_chans=3",
    "model.embed_dim=384",
    "model.depth=12",
    "model.num_heads=6",
    "model.pred_depth=6",
    "model.pred_emb_dim=384",
    "model.pred_num_heads=6",
    "mask.min_keep=1",
    "schedule.max_steps=1",
    "logging.tensorboard=false",
    "logging.jsonl=false",
    "checkpoint.save_at_end=false",
]


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def worker(out: str, root: str, stage: int, repeats: int) -> None:
    import torch
    import torch.distributed as dist

    from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
    from ijepa_ds.backend.ds_config import build_ds_config
    from ijepa_ds.checkpoint.resume import load_checkpoint
    from ijepa_ds.checkpoint.saver import save_checkpoint
    from ijepa_ds.config import load_config
    from ijepa_ds.distributed import detect_dist_env
    from ijepa_ds.train.loop import train_loop
    from ijepa_ds.train.trainer import build_trainer

    env = detect_dist_env()
    init_distributed(env)
    cfg = load_config("fmnist_tiny", OVERRIDES + [f"deepspeed.config=zero{stage}"])
    trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
    train_loop(trainer, start_step=0)
    rows = {"save_s": [], "load_s": [], "torch_save_s": [], "torch_load_s": []}
    for rep in range(repeats):
        run_dir = Path(root) / f"stage{stage}-{rep}"
        dist.barrier()
        t0 = time.perf_counter()
        folder = save_checkpoint(trainer, run_dir, 1, "bench")
        rows["save_s"].append(time.perf_counter() - t0)
        fresh = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
        dist.barrier()
        t0 = time.perf_counter()
        load_checkpoint(fresh, folder)
        rows["load_s"].append(time.perf_counter() - t0)
        del fresh
        # The same tensor volume as one plain file: the full fp32 student, two Adam-moment-sized
        # tensors per trainable parameter, and the target encoder.
        import deepspeed

        module = trainer.engine.module
        state = {"target": trainer.target.full_state_dict()}
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            for name, p in module.named_parameters():
                state[name] = p.detach().float().clone()
                if p.requires_grad:
                    state[f"{name}.exp_avg"] = state[name].clone()
                    state[f"{name}.exp_avg_sq"] = state[name].clone()
        plain = run_dir / "plain.pt"
        if env.rank == 0:
            t0 = time.perf_counter()
            torch.save(state, plain)
            rows["torch_save_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch.load(plain, weights_only=True)
            rows["torch_load_s"].append(time.perf_counter() - t0)
        if env.rank == 0:
            rows["checkpoint_bytes"] = _folder_bytes(folder)
            rows["plain_bytes"] = plain.stat().st_size
    if env.rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    shutdown_distributed()


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/checkpoint.md")
    parser.add_argument("--worker", nargs=4, metavar=("OUT", "ROOT", "STAGE", "REPEATS"))
    args = parser.parse_args()
    if args.worker:
        out, root, stage, repeats = args.worker
        worker(out, root, int(stage), int(repeats))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            out = Path(tmp) / f"s{stage}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node=2", "-m", "bench.checkpoint", "--worker", str(out), tmp,
                   str(stage), str(args.repeats)]  # fmt: skip
            done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-4000:])
            r = json.loads(out.read_text())
            lines.append(
                f"| ZeRO {stage} | {_median(r['save_s']):.2f} | {_median(r['load_s']):.2f} | "
                f"{r['checkpoint_bytes'] / 2**20:.1f} | {_median(r['torch_save_s']):.2f} | "
                f"{_median(r['torch_load_s']):.2f} | {r['plain_bytes'] / 2**20:.1f} |"
            )
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    text = "\n".join(
        [
            "# Checkpoint save/load: ijepa-ds vs a plain torch.save of the same tensors",
            "",
            f"Command: `python -m bench.checkpoint --stages {' '.join(map(str, args.stages))} "
            f"--repeats {args.repeats}`",
            "",
            f"Machine: {cpu}, {os.cpu_count()} cores, 2 ranks (gloo, CPU); load average "
            f"{os.getloadavg()[0]:.2f} at the end. Model: ViT-S/16 encoder (21.7M params) + "
            "6-block 384-wide predictor + fp32 target; medians of the repeats.",
            "",
            "Our save writes DeepSpeed shards from every rank, the gathered fp32 target, the train "
            "state (RNG of every rank), then publishes atomically (fsync + rename + `latest`). The "
            "plain file holds the same volume from rank 0: the student's fp32 weights, two "
            "moment-sized tensors per trainable weight and the target.",
            "",
            "| stage | save s | load s | checkpoint MiB | torch.save s | torch.load s "
            "| plain MiB |",
            "|---|---|---|---|---|---|---|",
            *lines,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

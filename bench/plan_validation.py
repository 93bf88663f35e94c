"""Predicted (``ijepa_ds.perf.memory``) vs measured per-rank memory of real training steps.

Run from the repository root (2 ranks, CPU, gloo)::

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 \\
        bench/plan_validation.py --out bench/results/plan_validation.md

For each configuration the real trainer (``build_trainer``) runs one warm-up step, then one
measured step split into forward, backward and optimizer step (``bench/memory_probe.py``):
model states by category from the tensors the rank holds, saved activations from autograd's
saved-tensor hooks, and each phase's peak from the profiler's allocator events. The memory
model gets the same shapes (K_enc, K_pred of the measured step) and the resolved DeepSpeed
config. ``reduce_bucket_size`` is lowered to 1e6 elements so that the fixed bucket does not
hide the terms that scale with the model.
"""

from __future__ import annotations

import argparse
import json

import common  # sets OMP_NUM_THREADS, puts the repo on sys.path)
import torch.distributed as dist
from memory_probe import SavedTensors, allocation_peak, held_bytes

from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
from ijepa_ds.backend.ds_config import build_ds_config
from ijepa_ds.config import load_config
from ijepa_ds.distributed import detect_dist_env
from ijepa_ds.perf.flops import shape_from_config
from ijepa_ds.perf.memory import ActivationSettings, EngineSettings, estimate_memory
from ijepa_ds.train.step import compute_loss, move_batch
from ijepa_ds.train.trainer import build_loader, build_trainer

BASE = [
    "data.dataset=synthetic",
    "data.synthetic_size=256",
    "data.crop_size=64",
    "data.normalize_mean=[0.5,0.5,0.5]",
    "data.normalize_std=[0.25,0.25,0.25]",
    "data.batch_size=16",
    "data.global_batch_size=32",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
    "model.name=vit_tiny",
    "model.patch_size=8",
    "model.in_chans=3",
    "model.embed_dim=192",
    "model.depth=4",
    "model.num_heads=3",
    "model.pred_depth=2",
    "model.pred_emb_dim=96",
    "model.pred_num_heads=3",
    "mask.min_keep=4",
    "schedule.max_steps=4",
    "logging.tensorboard=false",
    "logging.jsonl=false",
]
CASES = {
    "ZeRO-0 fp32": ["deepspeed.config=zero0", "optim.precision=fp32"],
    "ZeRO-1 fp32": ["deepspeed.config=zero1", "optim.precision=fp32"],
    "ZeRO-2 fp32": ["deepspeed.config=zero2", "optim.precision=fp32"],
    "ZeRO-3 fp32": ["deepspeed.config=zero3", "optim.precision=fp32"],
    "ZeRO-0 bf16": ["deepspeed.config=zero0", "optim.precision=bf16"],
    "ZeRO-1 bf16": ["deepspeed.config=zero1", "optim.precision=bf16"],
    "ZeRO-2 bf16": ["deepspeed.config=zero2", "optim.precision=bf16"],
    "ZeRO-3 bf16": ["deepspeed.config=zero3", "optim.precision=bf16"],
    "ZeRO-1 fp32, act ckpt enc 1 / pred 2": [
        "deepspeed.config=zero1",
        "optim.precision=fp32",
        "model.act_ckpt_encoder=1",
        "model.act_ckpt_predictor=2",
    ],
    "ZeRO-3 bf16, act ckpt enc 2": [
        "deepspeed.config=zero3",
        "optim.precision=bf16",
        "model.act_ckpt_encoder=2",
    ],
    "ZeRO-1 fp32, eager attention + copy gather": [
        "deepspeed.config=zero1",
        "optim.precision=fp32",
        "model.attn_impl=eager",
        "model.mask_gather=copy",
    ],
    "ZeRO-2 bf16, batch 32": [
        "deepspeed.config=zero2",
        "optim.precision=bf16",
        "data.batch_size=32",
        "data.global_batch_size=64",
    ],
}
BUCKET = 1_000_000


def measure_step(trainer, batch) -> dict[str, float]:
    """Model states before the step, then forward / backward / step peaks (bytes)."""
    cfg, engine, target = trainer.cfg, trainer.engine, trainer.target
    imgs, _, _, masks_enc, masks_pred = move_batch(batch, trainer.device)
    before = held_bytes(engine, target)
    with SavedTensors([engine.module, target.module]) as saved:
        fwd, net_f, (loss, h) = allocation_peak(
            lambda: compute_loss(
                engine, target, imgs, masks_enc, masks_pred, cfg.loss.kind, cfg.optim.precision
            )
        )
    after_fwd = held_bytes(engine, target)
    bwd, net_b, _ = allocation_peak(lambda: engine.backward(loss))
    after_bwd = held_bytes(engine, target)
    step, _, _ = allocation_peak(lambda: (engine.step(), target.ema_update(0.99)))
    persistent = sum(v for k, v in before.items() if k != "other")
    return {
        "params": before["params"],
        "master": before["master"],
        "moments": before["moments"],
        "target": before["target"],
        "grad_buffers": before["grads"],
        "grads_step": after_bwd["grads"] - before["grads"],
        "gathered": after_fwd["params"] - before["params"],
        "activations": saved.nbytes + h.untyped_storage().nbytes(),
        "forward": persistent + fwd,
        "backward": persistent + net_f + bwd,
        "step": persistent + net_f + net_b + step,
        "k_enc": masks_enc[0].shape[1],
        "k_pred": masks_pred[0].shape[1],
    }


def run_case(env, overrides: list[str]) -> dict:
    cfg = load_config("fmnist_tiny", BASE + overrides)
    ds = build_ds_config(cfg, env.world_size)
    ds["zero_optimization"]["reduce_bucket_size"] = BUCKET
    trainer = build_trainer(cfg, env, ds)
    loader = iter(build_loader(trainer, 0))
    warm = next(loader)
    measure_step(trainer, warm)  # allocates the optimizer state and DeepSpeed's buffers
    measured = measure_step(trainer, next(loader))
    measured["peak"] = max(measured[k] for k in ("forward", "backward", "step"))
    shape = shape_from_config(cfg, measured["k_enc"], measured["k_pred"])
    m = cfg.model
    act = ActivationSettings(
        cfg.data.batch_size, m.act_ckpt_encoder, m.act_ckpt_predictor, m.attn_impl, m.mask_gather
    )
    est = estimate_memory(shape, EngineSettings.from_ds_config(ds, env.world_size), act)
    predicted = est.as_dict()
    predicted.update(est.phase_peaks())
    del trainer, loader
    dist.barrier()
    return {"measured": measured, "predicted": predicted}


ROWS = [
    ("parameters", "params"),
    ("fp32 master", "master"),
    ("Adam moments", "moments"),
    ("target encoder", "target"),
    ("persistent gradient buffers", "grad_buffers"),
    ("gradients at the step", "grads_step"),
    ("ZeRO-3 gathered parameters", "gathered"),
    ("activations (saved + target features)", "activations"),
    ("live at end of forward", "forward"),
    ("peak during backward", "backward"),
    ("peak during step", "step"),
    ("**peak**", "peak"),
]


def _err(pred: float, meas: float) -> str:
    if meas == 0:
        return "exact" if pred == 0 else "n/a"
    return f"{100 * (pred - meas) / meas:+.1f}%"


def format_results(results: dict, header: str) -> str:
    lines = [header, ""]
    worst = []
    for label, res in results.items():
        meas, pred = res["measured"], res["predicted"]
        lines += [
            f"### {label} (K_enc {meas['k_enc']}, K_pred {meas['k_pred']})",
            "",
            "| term | measured MiB | predicted MiB | error |",
            "|---|---|---|---|",
        ]
        for name, key in ROWS:
            if meas[key] < 1024 and pred[key] < 1024:  # e.g. a 4-byte grad-norm scalar
                continue
            m, p = meas[key] / 2**20, pred[key] / 2**20
            lines.append(f"| {name} | {m:.2f} | {p:.2f} | {_err(pred[key], meas[key])} |")
        worst.append((label, (pred["peak"] - meas["peak"]) / meas["peak"]))
        lines.append("")
    summary = ["| configuration | peak error |", "|---|---|"]
    summary += [f"| {label} | {100 * e:+.1f}% |" for label, e in worst]
    largest = max(abs(e) for _, e in worst)
    summary.append(f"\nLargest peak error: {100 * largest:.1f}% (goal: within 15%).\n")
    return "\n".join(lines[:2] + summary + [""] + lines[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/plan_validation.md")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="subset of CASES")
    args = parser.parse_args()
    env = detect_dist_env()
    init_distributed(env)
    start = common.machine_info()
    results = {label: run_case(env, CASES[label]) for label in args.cases}
    shutdown_distributed()
    if env.rank != 0:
        return
    command = (
        "OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 "
        "bench/plan_validation.py"
    )
    header = (
        "# Memory model vs measurement (per rank, 2 ranks, CPU)\n\n"
        f"Command (repository root): `{command}`\n\n"
        + common.machine_header(start, common.load_average())
        + HOW
    )
    common.write_result(args.out, format_results(results, header))
    print(json.dumps(results, indent=1))


HOW = """
Model: ViT width 192, depth 4, 3 heads, patch 8 on 64x64 images (64 patches); predictor width
96, depth 2; 16 images per rank unless stated; `reduce_bucket_size` 1e6 elements.

How each number is measured (rank 0; `bench/memory_probe.py`):
- model-state rows: every tensor the process holds (`gc.get_objects()`), deduplicated by
  storage and assigned to the engine's parameters, the AdamW state, the fp32 master
  partitions, gradients (`.grad`, DeepSpeed's partitions and buckets) or the target encoder,
  before the measured step; "gradients at the step" is the increase after `engine.backward`;
  "ZeRO-3 gathered parameters" is the increase of parameter storage after the forward.
- activations: distinct storages autograd saved during the forward
  (`torch.autograd.graph.saved_tensors_hooks`, parameters excluded) plus the target features.
- phase peaks: the persistent states plus the running maximum of the CPU allocator's
  allocation/free events recorded by `torch.profiler` (`profile_memory=True`) during the
  forward, the backward and the step (temporaries included).
"""


if __name__ == "__main__":
    main()

"""Run under ``torchrun --nproc_per_node 2``: the DeepSpeed trainer vs plain single-process torch.

For each ZeRO stage (fp32, 2 ranks, gradient accumulation 2, warmup + cosine lr, cosine wd,
fast EMA momentum schedule) the real trainer (``build_trainer`` + ``train_loop``) runs k
optimizer steps; rank 0 replays the same global batches in one process with torch AdamW and
compares encoder, predictor and target encoder. Deliberately wrong references (no wd
schedule, EMA momentum one step late) are measured too, so the tolerance has teeth. Then a
bf16 smoke run per stage, the ZeRO-3 target-encoder memory, and activation checkpointing.
ZeRO 0 and 3 also run the padded mask policies (keep_all; group_min with two groups per
micro-batch), whose micro-batches pad differently from the reference's whole-step batch.
Results go to the JSON file named by argv[1] (rank 0).
"""

from __future__ import annotations

import copy
import json
import sys

import deepspeed
import torch
import torch.distributed as dist

from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
from ijepa_ds.backend.ds_config import build_ds_config
from ijepa_ds.backend.param_groups import build_param_groups, set_lr_wd
from ijepa_ds.config import load_config
from ijepa_ds.data import PositionDataset
from ijepa_ds.distributed import detect_dist_env
from ijepa_ds.loss import jepa_loss, make_targets, valid_targets
from ijepa_ds.train.loop import train_loop
from ijepa_ds.train.trainer import build_student, build_trainer

STEPS = 3
OVERRIDES = [
    "data.dataset=synthetic",
    "data.synthetic_size=64",
    "data.crop_size=32",
    "data.normalize_mean=[0.5,0.5,0.5]",
    "data.normalize_std=[0.25,0.25,0.25]",
    "data.batch_size=4",
    "data.global_batch_size=16",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
    "model.name=vit_tiny",
    "model.patch_size=4",
    "model.in_chans=3",
    "model.embed_dim=48",
    "model.depth=2",
    "model.num_heads=3",
    "model.pred_depth=1",
    "model.pred_emb_dim=24",
    "model.pred_num_heads=3",
    "mask.min_keep=2",
    "schedule.epochs=2",
    "schedule.warmup_epochs=0.5",
    "schedule.start_lr=1e-3",
    "schedule.lr=3e-3",
    "schedule.final_lr=1e-4",
    "schedule.weight_decay=0.04",
    "schedule.final_weight_decay=0.4",
    f"schedule.max_steps={STEPS}",
    "ema.momentum_start=0.9",
    "ema.momentum_end=1.0",
    "optim.precision=fp32",
    "logging.tensorboard=false",
    "logging.jsonl=false",
    "eval.pretrain_val_every_epochs=0",
    "eval.health_every_steps=0",
]
# group_min with two groups per micro-batch of 4: rows of one micro-batch cut to two lengths.
GROUP_TWO = ["mask.context_policy=group_min", "mask.group_size=2"]
# Padded policies, run at ZeRO 0 and 3 only (each case costs two short trainer runs).
POLICIES = {
    "keep_all": ["mask.context_policy=keep_all"],
    "group_min": GROUP_TWO,
}


def _gathered(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {n: p.detach().float().clone() for n, p in module.named_parameters()}


def reference_run(trainer, cfg, wd_schedule=True, momentum_shift=0) -> dict:
    """Single-process torch: the same global batches, AdamW in the four groups, fp32 EMA."""
    student = build_student(cfg)
    encoder, predictor = student.encoder, student.predictor
    target = copy.deepcopy(encoder)
    groups = build_param_groups(encoder, predictor)
    opt = torch.optim.AdamW(groups, lr=0.0, betas=cfg.optim.betas, eps=cfg.optim.eps)
    dataset = PositionDataset(trainer.dataset, trainer.global_batch_size, cfg.seed)
    sched, gbs = trainer.schedule, trainer.global_batch_size
    for step in range(STEPS):
        wd = sched.wd_at(step) if wd_schedule else cfg.schedule.weight_decay
        set_lr_wd(opt.param_groups, sched.lr_at(step), wd)
        positions = list(range(step * gbs, (step + 1) * gbs))
        imgs = torch.stack([dataset[p][0] for p in positions])
        masks_enc, masks_pred = trainer.mask_sampler(positions)
        with torch.no_grad():
            h = make_targets(target(imgs), masks_pred, len(masks_enc))
        z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
        opt.zero_grad()
        jepa_loss(z, h, cfg.loss.kind, valid_targets(masks_pred, len(masks_enc))).backward()
        opt.step()
        m = sched.momentum_at(step + momentum_shift)
        with torch.no_grad():
            for t, s in zip(target.parameters(), encoder.parameters()):
                t.mul_(m).add_((1.0 - m) * s)
    return {
        "encoder": {n: p.detach() for n, p in encoder.named_parameters()},
        "predictor": {n: p.detach() for n, p in predictor.named_parameters()},
        "target": {n: p.detach() for n, p in target.named_parameters()},
    }


def _states(trainer) -> dict[str, dict[str, torch.Tensor]]:
    """Full fp32 weights of the student's encoder and predictor and of the target."""
    return {
        "encoder": _gathered(trainer.engine.module.encoder),
        "predictor": _gathered(trainer.engine.module.predictor),
        "target": _gathered(trainer.target.module),
    }


def offload_run(env, reference: dict | None) -> dict:
    """ZeRO 1 and 3 with ``deepspeed.offload_optimizer=true`` (fp32) against the torch
    reference (rank 0 compares)."""
    out = {}
    for stage in (1, 3):
        extra = [f"deepspeed.config=zero{stage}", "deepspeed.offload_optimizer=true"]
        cfg = load_config("fmnist_tiny", OVERRIDES + extra)
        trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
        entry = {"losses": train_loop(trainer, start_step=0)}
        got = _states(trainer)  # a collective under ZeRO-3: every rank gathers
        if env.rank == 0:
            entry["good"] = max_diff(reference, got)
        out[stage] = entry
        del trainer
        dist.barrier()
    return out


def max_diff(a: dict, b: dict) -> float:
    return max((a[part][n] - b[part][n]).abs().max().item() for part in a for n in a[part])


def policy_run(env, extra: list[str]) -> dict:
    """ZeRO 0 and 3 under a padded mask policy against the torch reference (rank 0 compares);
    ``padded``: whether a micro-batch of the first step really holds padding."""
    out, ref = {}, None
    for stage in (0, 3):
        cfg = load_config("fmnist_tiny", OVERRIDES + extra + [f"deepspeed.config=zero{stage}"])
        trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
        losses = train_loop(trainer, start_step=0)
        got = _states(trainer)
        masks_enc, _ = trainer.mask_sampler(list(range(cfg.data.batch_size)))
        entry = {"losses": losses, "padded": bool((masks_enc[0] < 0).any())}
        if env.rank == 0:
            ref = ref or reference_run(trainer, cfg)
            entry["good"] = max_diff(ref, got)
        out[stage] = entry
        del trainer
        dist.barrier()
    return out


def main(out_path: str) -> None:
    env = detect_dist_env()
    init_distributed(env)
    results: dict = {"stages": {}, "bf16": {}}
    refs: dict = {}
    for stage in (0, 1, 2, 3):
        cfg = load_config("fmnist_tiny", OVERRIDES + [f"deepspeed.config=zero{stage}"])
        trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
        losses = train_loop(trainer, start_step=0)
        got = _states(trainer)
        entry = {"losses": losses, "accumulation": trainer.accumulation}
        if stage == 3:
            full = sum(p.ds_numel for p in trainer.target.module.parameters())
            entry["target_local_fraction"] = trainer.target.local_numel() / full
        if env.rank == 0:
            if not refs:
                refs["good"] = reference_run(trainer, cfg)
                refs["no_wd_schedule"] = reference_run(trainer, cfg, wd_schedule=False)
                refs["ema_off_by_one"] = reference_run(trainer, cfg, momentum_shift=1)
            entry.update({name: max_diff(ref, got) for name, ref in refs.items()})
        results["stages"][stage] = entry
        del trainer
        dist.barrier()
    results["offload"] = offload_run(env, refs.get("good"))
    results["policies"] = {name: policy_run(env, extra) for name, extra in POLICIES.items()}
    for stage in (0, 1, 2, 3):
        cfg = load_config(
            "fmnist_tiny", OVERRIDES + [f"deepspeed.config=zero{stage}", "optim.precision=bf16"]
        )
        trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
        results["bf16"][stage] = train_loop(trainer, start_step=0)
        del trainer
    if env.rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()

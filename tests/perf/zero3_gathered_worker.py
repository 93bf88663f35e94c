"""Run under torchrun (2 ranks): how many 16/32-bit parameters ZeRO-3 keeps gathered at the end
of a forward, against the planner's ``gathered`` term.

argv: out.json. For each DeepSpeed knob set in ``CASES`` it builds the real trainer
(``build_trainer``: the student in one ZeRO-3 engine, ViT-H/14-shaped at width 320 and depth 4,
act ckpt on every block, micro-batch 1, fp32) and runs one whole step, so that DeepSpeed records
its module trace, then the forward of a second step. Gathered bytes: the full ``.data`` of
every parameter that ZeRO-3 partitions (``ds_persist`` false; a released one holds no
elements). The second step's backward and step then run, so the engine ends in a clean state.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
from ijepa_ds.backend.ds_config import build_ds_config
from ijepa_ds.config import load_config
from ijepa_ds.distributed import detect_dist_env
from ijepa_ds.perf.flops import shape_from_config
from ijepa_ds.perf.memory import ActivationSettings, EngineSettings, estimate_memory
from ijepa_ds.train.step import compute_loss, move_batch
from ijepa_ds.train.trainer import build_loader, build_trainer

OVERRIDES = [
    "data.dataset=synthetic", "data.synthetic_size=8", "data.batch_size=1",
    "data.global_batch_size=2", "data.num_workers=0", "data.pin_memory=false",
    "model.embed_dim=320", "model.num_heads=4", "model.depth=4", "model.pred_emb_dim=128",
    "model.pred_num_heads=4", "model.pred_depth=2", "model.act_ckpt_encoder=1",
    "model.act_ckpt_predictor=1", "optim.precision=fp32", "deepspeed.config=zero3",
    "logging.tensorboard=false", "logging.jsonl=false",
]  # fmt: skip
# The model has about 3.6M elements; its largest parameter (fc1/fc2) 410K.
CASES = {
    "shipped": {},  # max_live 1e9 and reuse distance 1e8: the whole model
    # A 1e6 reuse distance keeps about 0.5M; prefetching keeps up to max_live, 2M.
    "live_2e6": {
        "stage3_max_live_parameters": 2_000_000,
        "stage3_prefetch_bucket_size": 500_000,
        "stage3_max_reuse_distance": 1_000_000,
    },
    "no_prefetch": {"stage3_prefetch_bucket_size": 0, "stage3_max_reuse_distance": 1_000_000},
}


def partitioned(module) -> list:
    """The parameters ZeRO-3 shards and releases (small ones persist whole on every rank)."""
    return [p for p in module.parameters() if not p.ds_persist]


def gathered_bytes(module) -> int:
    return sum(p.data.numel() * p.data.element_size() for p in partitioned(module))


def measure(env, knobs: dict) -> dict:
    cfg = load_config("vit_h14_in1k", OVERRIDES)
    ds = build_ds_config(cfg, env.world_size)
    ds["zero_optimization"].update(knobs)
    trainer = build_trainer(cfg, env, ds)
    engine, target = trainer.engine, trainer.target
    loader = iter(build_loader(trainer, 0))
    measured = []
    for _ in range(2):
        imgs, _, _, masks_enc, masks_pred = move_batch(next(loader), trainer.device)
        before = gathered_bytes(engine.module)
        loss, _ = compute_loss(
            engine, target, imgs, masks_enc, masks_pred, cfg.loss.kind, cfg.optim.precision
        )
        measured.append(gathered_bytes(engine.module) - before)
        engine.backward(loss)
        engine.step()
    shape = shape_from_config(cfg, masks_enc[0].shape[1], masks_pred[0].shape[1])
    act = ActivationSettings(cfg.data.batch_size, 1, 1)
    planned = estimate_memory(shape, EngineSettings.from_ds_config(ds, env.world_size), act)
    whole = sum(p.ds_numel * 4 for p in partitioned(engine.module))  # fp32
    del trainer, loader
    dist.barrier()
    return {"first": measured[0], "second": measured[1], "planned": planned.gathered,
            "whole": whole}  # fmt: skip


def main(out: str) -> None:
    env = detect_dist_env()
    init_distributed(env)
    results = {name: measure(env, knobs) for name, knobs in CASES.items()}
    if env.rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])

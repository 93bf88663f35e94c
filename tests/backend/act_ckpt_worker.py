"""Run under torchrun (2 ranks): gradients with activation checkpointing vs without.

Plain modules (each rank alone): every implementation (torch non-reentrant, DeepSpeed,
fairscale), with and without CPU offload, at both intervals (every block, every 2nd block), on
the encoder and on the predictor. Then the trainer's own engine (``build_engine_and_target``, which
applies checkpointing from the config) at ZeRO 0 and ZeRO 3 over both ranks: every
implementation, with and without offload, on every encoder and predictor block, against the
same engine without checkpointing. (DeepSpeed's CPU offload needs a GPU: on a CPU device the
"offloaded" copy shares storage with the activation it frees; it runs only where there is one.)
Writes {"plain": {variant: ...}, "zero": {stage: {variant: ...}}} to argv[1] (rank 0).
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad

from ijepa_ds.backend.act_ckpt import apply_activation_checkpointing
from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
from ijepa_ds.backend.ds_config import build_ds_config
from ijepa_ds.config import load_config
from ijepa_ds.distributed import detect_dist_env
from ijepa_ds.loss import jepa_loss, make_targets
from ijepa_ds.masks import MultiBlockMaskSampler
from ijepa_ds.models import build_encoder, build_predictor
from ijepa_ds.train.step import compute_loss
from ijepa_ds.train.trainer import build_engine_and_target, build_student

# (implementation, CPU offload) under their result names.
VARIANTS = {
    "torch": ("torch", False),
    "torch+offload": ("torch", True),
    "deepspeed": ("deepspeed", False),
    "fairscale": ("fairscale", False),
    "fairscale+offload": ("fairscale", True),
}
if torch.cuda.is_available():
    VARIANTS["deepspeed+offload"] = ("deepspeed", True)

ENGINE_OVERRIDES = [
    "data.crop_size=32",
    "data.batch_size=4",
    "data.global_batch_size=8",  # 2 ranks x 4: one micro-batch per step
    "model.name=vit_tiny",
    "model.patch_size=4",
    "model.in_chans=3",
    "model.embed_dim=48",
    "model.depth=4",
    "model.num_heads=3",
    "model.pred_depth=2",
    "model.pred_emb_dim=24",
    "model.pred_num_heads=3",
    "optim.precision=fp32",
]


def build_models():
    """Encoder (depth 4) and predictor (depth 2), a batch [4, 3, 32, 32] and its masks."""
    torch.manual_seed(0)
    encoder = build_encoder(
        "tiny", img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, drop_path_rate=0.0
    )
    predictor = build_predictor(encoder, predictor_embed_dim=24, depth=2, num_heads=3)
    imgs = torch.randn(4, 3, 32, 32)
    masks_enc, masks_pred = MultiBlockMaskSampler((8, 8), 4, seed=0, min_keep=2)(list(range(4)))
    return encoder, predictor, imgs, masks_enc, masks_pred


def grads(encoder, predictor, imgs, masks_enc, masks_pred) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        h = make_targets(encoder(imgs), masks_pred, len(masks_enc))
    z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
    jepa_loss(z, h).backward()
    modules = {"encoder": encoder, "predictor": predictor}
    return {
        f"{m}.{n}": p.grad.clone()
        for m, mod in modules.items()
        for n, p in mod.named_parameters()
        if p.requires_grad
    }


def plain_results() -> dict:
    encoder, predictor, imgs, masks_enc, masks_pred = build_models()
    baseline = grads(copy.deepcopy(encoder), copy.deepcopy(predictor), imgs, masks_enc, masks_pred)
    results = {}
    for variant, (impl, offload) in VARIANTS.items():
        for part in ("encoder", "predictor"):
            for every in (1, 2):
                enc, pred = copy.deepcopy(encoder), copy.deepcopy(predictor)
                blocks = enc.blocks if part == "encoder" else pred.predictor_blocks
                count = apply_activation_checkpointing(blocks, every, impl, offload)
                got = grads(enc, pred, imgs, masks_enc, masks_pred)
                results[f"{variant}/{part}/every{every}"] = {
                    "checkpointed_blocks": count,
                    "max_diff": max((got[k] - baseline[k]).abs().max().item() for k in baseline),
                    "state_dict_keys_kept": list(enc.state_dict()) == list(encoder.state_dict())
                    and list(pred.state_dict()) == list(predictor.state_dict()),
                }
    return results


def checkpointed(student) -> list[list]:
    """[impl, cpu_offload] of every block whose forward apply_activation_checkpointing set."""
    blocks = [*student.encoder.blocks, *student.predictor.predictor_blocks]
    return [list(vars(b)["forward"].args[2:]) for b in blocks if "forward" in vars(b)]


def engine_grads(stage: int, overrides: list[str], rank: int) -> tuple[dict, list[str], list]:
    """One forward and backward of the trainer's engine on this rank's batch: full gradients
    (gathered at ZeRO 3), the module's state-dict keys and its checkpointed blocks."""
    overrides = [*ENGINE_OVERRIDES, f"deepspeed.config=zero{stage}", *overrides]
    cfg = load_config("fmnist_tiny", overrides)
    student = build_student(cfg)
    engine, target = build_engine_and_target(student, build_ds_config(cfg, 2), cfg.model, cfg.optim)
    imgs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    positions = list(range(4 * rank, 4 * rank + 4))
    masks_enc, masks_pred = MultiBlockMaskSampler((8, 8), 8, seed=0, min_keep=2)(positions)
    loss, _ = compute_loss(engine, target, imgs, masks_enc, masks_pred, cfg.loss.kind, "fp32")
    engine.backward(loss)
    # safe_get_full_grad gathers at ZeRO 3: every rank asks for every parameter, in order.
    params = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    got = {n: safe_get_full_grad(p).clone() for n, p in params}
    keys, blocks = list(engine.module.state_dict()), checkpointed(engine.module)
    del engine, target
    dist.barrier()
    return got, keys, blocks


def zero_results(rank: int) -> dict:
    results = {}
    for stage in (0, 3):
        baseline, base_keys, none = engine_grads(stage, [], rank)
        assert none == [], none
        results[stage] = {}
        for variant, (impl, offload) in VARIANTS.items():
            got, keys, blocks = engine_grads(
                stage,
                [
                    "model.act_ckpt_encoder=1",
                    "model.act_ckpt_predictor=1",
                    f"model.act_ckpt_impl={impl}",
                    f"model.act_ckpt_cpu_offload={str(offload).lower()}",
                ],
                rank,
            )
            results[stage][variant] = {
                "max_diff": max((got[k] - baseline[k]).abs().max().item() for k in baseline),
                "state_dict_keys_kept": keys == base_keys,
                "checkpointed": blocks,
                "grad_abs_max": max(g.abs().max().item() for g in baseline.values()),
            }
    return results


def main(out: str) -> None:
    env = detect_dist_env()
    init_distributed(env)
    results = {"plain": plain_results(), "zero": zero_results(env.rank)}
    if env.rank == 0:
        json.dump(results, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()

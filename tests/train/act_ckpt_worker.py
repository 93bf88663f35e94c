"""Run under torchrun (1 rank): gradients with activation checkpointing vs without.

Both implementations (torch non-reentrant, DeepSpeed) and intervals (every block, every 2nd
block) on the encoder and on the predictor. (DeepSpeed's CPU offload needs a GPU: on a CPU
device the "offloaded" copy shares storage with the activation it frees.) Writes {variant: max
abs gradient difference} to argv[1].
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from ijepa_ds.distributed import detect_dist_env, init_distributed, shutdown_distributed
from ijepa_ds.loss import jepa_loss, make_targets
from ijepa_ds.masks import MultiBlockMaskSampler
from ijepa_ds.models import build_encoder, build_predictor
from ijepa_ds.train.act_ckpt import (
    apply_activation_checkpointing,
    configure_deepspeed_checkpointing,
)


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


def main(out: str) -> None:
    init_distributed(detect_dist_env())
    torch.manual_seed(0)
    encoder = build_encoder(
        "tiny", img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, drop_path_rate=0.0
    )
    predictor = build_predictor(encoder, predictor_embed_dim=24, depth=2, num_heads=3)
    imgs = torch.randn(4, 3, 32, 32)
    masks_enc, masks_pred = MultiBlockMaskSampler((8, 8), 4, seed=0, min_keep=2)(list(range(4)))
    baseline = grads(copy.deepcopy(encoder), copy.deepcopy(predictor), imgs, masks_enc, masks_pred)
    results = {}
    for impl in ("torch", "deepspeed"):
        if impl == "deepspeed":
            configure_deepspeed_checkpointing(cpu_offload=False)
        for part in ("encoder", "predictor"):
            for every in (1, 2):
                enc, pred = copy.deepcopy(encoder), copy.deepcopy(predictor)
                blocks = enc.blocks if part == "encoder" else pred.predictor_blocks
                count = apply_activation_checkpointing(blocks, every, impl)
                got = grads(enc, pred, imgs, masks_enc, masks_pred)
                name = f"{impl}/{part}/every{every}"
                results[name] = {
                    "checkpointed_blocks": count,
                    "max_diff": max((got[k] - baseline[k]).abs().max().item() for k in baseline),
                    "state_dict_keys_kept": list(enc.state_dict()) == list(encoder.state_dict()),
                }
    json.dump(results, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()

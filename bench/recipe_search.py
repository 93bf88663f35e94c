"""Fast single-process proxy for the quality benchmark: which tiny recipe learns content?

``bench/quality.py`` runs the real trainer (2 ranks, DeepSpeed) and the full probes, about 25
minutes per recipe on a 2-core CPU. This script trains the package's own encoder, predictor,
multi-block masks and loss with plain AdamW in one process (no DeepSpeed, no data loader:
Fashion-MNIST in memory, RandomResizedCrop done batched with ``affine_grid``), then evaluates
the target encoder on a 10k-image train subset and the 10k test images with an L-BFGS
logistic-regression probe on standardised average-pooled features and a cosine kNN (k 20,
T 0.07). Absolute numbers therefore differ from ``quality.md``'s table; compare variants with
each other and with ``--init-only`` (the same encoder at initialisation).

Run from the repository root, e.g.::

    python bench/recipe_search.py --steps 400 --ema 0.99 0.999 --tag ema99
    python bench/recipe_search.py --init-only

Each finished run appends one JSON line to ``--results``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ijepa_ds.data.fashion_mnist import FashionMNIST  # noqa: E402
from ijepa_ds.eval.features import POOLS, pool_features  # noqa: E402
from ijepa_ds.loss import jepa_loss, make_targets  # noqa: E402
from ijepa_ds.masks.multiblock import MultiBlockMaskSampler  # noqa: E402
from ijepa_ds.models.predictor import build_predictor  # noqa: E402
from ijepa_ds.models.vit import build_encoder  # noqa: E402

ROOT = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2.5e-4, help="peak lr")
    p.add_argument("--start-lr", type=float, default=None, help="warmup start (default lr / 5)")
    p.add_argument("--warmup", type=float, default=0.2, help="warmup fraction of the steps")
    p.add_argument("--wd", type=float, nargs=2, default=[0.04, 0.4], help="cosine wd start end")
    p.add_argument("--ema", type=float, nargs=2, default=[0.996, 1.0], help="EMA start end")
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--pdim", type=int, default=96)
    p.add_argument("--pdepth", type=int, default=3)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--size", type=int, default=28, help="image side (28 = native)")
    p.add_argument("--crop", type=float, nargs=2, default=[0.3, 1.0], help="RRC area scale")
    p.add_argument("--enc-scale", type=float, nargs=2, default=[0.85, 1.0])
    p.add_argument("--pred-scale", type=float, nargs=2, default=[0.15, 0.2])
    p.add_argument("--npred", type=int, default=4)
    p.add_argument("--loss", default="smooth_l1")
    p.add_argument("--pe-scale", type=float, default=1.0, help="patch-embedding init factor")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps")
    p.add_argument("--ntrain", type=int, default=10000, help="train images for the probes")
    p.add_argument("--student", action="store_true", help="evaluate the student too")
    p.add_argument("--init-only", action="store_true", help="evaluate the init encoder only")
    p.add_argument("--pixels", action="store_true", help="evaluate raw pixels only")
    p.add_argument("--pools", nargs="+", default=["avg", "last4"], choices=list(POOLS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--results", default="recipe_search.jsonl")
    return p.parse_args(argv)


def load_split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, 1, 28, 28] floats in [0, 1], [N] labels)."""
    split = FashionMNIST(ROOT, train)
    images = torch.from_numpy(split.images.copy()).float().div(255).unsqueeze(1)
    return images, split.targets


def normalize(x: torch.Tensor, size: int) -> torch.Tensor:
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - MEAN) / STD


def random_resized_crop(x: torch.Tensor, size: int, scale, g: torch.Generator) -> torch.Tensor:
    """Batched RandomResizedCrop (area ``scale``, aspect 3/4..4/3): [B, 1, H, W] -> [B, 1, S, S]."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=g)
    ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, (b, 1, size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def pooled_features(model, x: torch.Tensor, size: int, pool: str = "avg") -> torch.Tensor:
    """[N, 1, 28, 28] -> [N, D] ("avg") or [N, 4 D] ("last4"), as ``ijepa-ds eval`` pools."""
    model.eval()
    chunks = [x[i : i + 1000] for i in range(0, len(x), 1000)]
    return torch.cat([pool_features(model, normalize(chunk, size), pool) for chunk in chunks])


def _logistic_regression(ftr, ytr, fte, yte, l2: float) -> float:
    """Top-1 (%) of a full-batch L-BFGS softmax regression with an L2 weight penalty."""
    head = torch.nn.Linear(ftr.shape[1], 10)
    opt = torch.optim.LBFGS(
        head.parameters(), lr=1, max_iter=300, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(ftr), ytr) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (head(fte).argmax(1) == yte).float().mean().item() * 100


def probe_and_knn(ftr, ytr, fte, yte) -> tuple[float, float]:
    """(best L-BFGS logistic-regression top-1 over two L2 weights, kNN top-1), in %."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    best = max(_logistic_regression(ftr, ytr, fte, yte, l2) for l2 in (1e-4, 1e-3))
    sim = F.normalize(fte, dim=1) @ F.normalize(ftr, dim=1).T
    values, idx = sim.topk(20, dim=1)
    votes = torch.zeros(len(fte), 10).scatter_add_(1, ytr[idx], (values / 0.07).exp())
    return best, (votes.argmax(1) == yte).float().mean().item() * 100


def train_subset(data, a) -> torch.Tensor:
    return torch.randperm(len(data[0][0]), generator=torch.Generator().manual_seed(1))[: a.ntrain]


def evaluate(model, data, a) -> dict[str, tuple[float, float]]:
    """pool -> (probe top-1, kNN top-1) for each of ``a.pools``."""
    (xtr, ytr), (xte, yte) = data
    idx = train_subset(data, a)
    out = {}
    for pool in a.pools:
        ftr = pooled_features(model, xtr[idx], a.size, pool)
        out[pool] = probe_and_knn(ftr, ytr[idx], pooled_features(model, xte, a.size, pool), yte)
    return out


def evaluate_pixels(data, a) -> tuple[float, float]:
    """The same probe and kNN on flattened normalised pixels [N, 784]: the bar to beat."""
    (xtr, ytr), (xte, yte) = data
    idx = train_subset(data, a)
    flat = [normalize(x, 28).flatten(1) for x in (xtr[idx], xte)]
    return probe_and_knn(flat[0], ytr[idx], flat[1], yte)


def schedules(a, step: int, warm: int) -> tuple[float, float, float]:
    """(lr, wd, EMA momentum) at ``step``: warmup + cosine lr, cosine wd, linear momentum."""
    start_lr = a.start_lr if a.start_lr is not None else a.lr / 5
    if step < warm:
        lr = start_lr + (a.lr - start_lr) * step / max(1, warm)
    else:
        progress = (step - warm) / max(1, a.steps - warm)
        lr = 1e-6 + 0.5 * (a.lr - 1e-6) * (1 + math.cos(math.pi * progress))
    wd = a.wd[0] + 0.5 * (a.wd[1] - a.wd[0]) * (1 - math.cos(math.pi * step / a.steps))
    return lr, wd, a.ema[0] + step * (a.ema[1] - a.ema[0]) / a.steps


def train(a, enc, pred, tgt, data, log) -> None:
    """Plain-AdamW I-JEPA training of (enc, pred) with ``tgt`` as the EMA of ``enc``."""
    xtr = data[0][0]
    sampler = MultiBlockMaskSampler(
        enc.grid_size, a.batch, seed=a.seed, enc_mask_scale=tuple(a.enc_scale),
        pred_mask_scale=tuple(a.pred_scale), npred=a.npred, min_keep=4,
    )  # fmt: skip
    params = [p for m in (enc, pred) for p in m.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=a.lr)
    warm, g, start = int(a.warmup * a.steps), torch.Generator().manual_seed(a.seed), time.time()
    for step in range(a.steps):
        lr, wd, momentum = schedules(a, step, warm)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd
        idx = torch.randint(0, len(xtr), (a.batch,), generator=g)
        imgs = (random_resized_crop(xtr[idx], a.size, a.crop, g) - MEAN) / STD
        masks_enc, masks_pred = sampler(np.arange(step * a.batch, (step + 1) * a.batch))
        enc.train(), pred.train()
        with torch.no_grad():
            h = tgt(imgs)
        z = pred(enc(imgs, masks_enc), masks_enc, masks_pred)
        loss = jepa_loss(z, make_targets(h, masks_pred, len(masks_enc)), a.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            tp = list(tgt.parameters())
            torch._foreach_mul_(tp, momentum)
            torch._foreach_add_(tp, list(enc.parameters()), alpha=1 - momentum)
        if step % 50 == 0 or step == a.steps - 1:
            content = F.layer_norm(h, h.shape[-1:]).std(0).mean()  # across images, per position
            pace = (time.time() - start) / (step + 1)
            print(
                f"step {step} loss {loss.item():.4f} lr {lr:.2e} momentum {momentum:.4f} "
                f"target std across images {content:.3f} {pace:.2f} s/step",
                flush=True,
            )
        if a.eval_every and (step + 1) % a.eval_every == 0 and step + 1 < a.steps:
            log({"tag": a.tag, "step": step + 1, "target": evaluate(tgt, data, a)})


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    data = (load_split(True), load_split(False))
    enc = build_encoder(
        "custom", img_size=a.size, patch_size=a.patch, in_chans=1, embed_dim=a.dim,
        depth=a.depth, num_heads=a.heads,
    )  # fmt: skip
    pred = build_predictor(enc, predictor_embed_dim=a.pdim, depth=a.pdepth, num_heads=a.heads)
    with torch.no_grad():
        enc.patch_embed.proj.weight.mul_(a.pe_scale)
    tgt = copy.deepcopy(enc).requires_grad_(False)

    def log(record: dict) -> None:
        print(json.dumps(record), flush=True)

    if a.pixels:
        log({"tag": a.tag or "pixels", "pixels": evaluate_pixels(data, a)})
        return 0
    if a.init_only:
        log({"tag": a.tag or "init", "init": evaluate(tgt, data, a), "args": vars(a)})
        return 0
    start = time.time()
    train(a, enc, pred, tgt, data, log)
    record = {
        "tag": a.tag, "step": a.steps, "target": evaluate(tgt, data, a),
        "student": evaluate(enc, data, a) if a.student else None,
        "train_sec": time.time() - start, "args": vars(a),
    }  # fmt: skip
    log(record)
    with open(a.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

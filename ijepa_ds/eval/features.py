"""Frozen-encoder features for probes: pooling, batched extraction, a disk cache, rank shards.

Pools (the paper's two linear-probe inputs, no [cls] token in I-JEPA):

- ``"avg"``: mean over patches of the encoder output (the last block followed by the final
  LayerNorm ``encoder.norm``), width D.
- ``"last4"``: the outputs of the last 4 blocks, each passed through the final LayerNorm
  ``encoder.norm`` and averaged over patches, concatenated from the 4th-last block to the last,
  width 4 D. Applying the final norm to every intermediate output is what DINO's linear
  evaluation (``get_intermediate_layers``, ``n_last_blocks=4``) does; the I-JEPA paper reuses
  that protocol. As a consequence the last D columns of "last4" equal "avg".
- ``"grid2"``: the last layer's output (after ``encoder.norm``) averaged over each quarter of the
  patch grid (adaptive 2x2 average pool over the h x w patches), concatenated row-major, width
  4 D. It keeps the coarse layout that "avg" throws away: on small, centred images (Fashion-MNIST)
  the layout is much of what separates the classes, and raw pixels keep all of it.
- ``"tokens"``: every token of the last layer (after ``encoder.norm``), concatenated in
  row-major patch order, width h w D for an h x w patch grid. It keeps everything the encoder
  computed, and it is wide (14 x 14 x 192 = 37,632 for a ViT-Tiny/4 at 56 px), so it is stored
  in fp16 and meant for kNN, which reads it one chunk at a time (``eval.knn``).

Extraction runs the encoder in eval mode under ``torch.no_grad()``. When a
``torch.distributed`` process group is initialised (``torchrun``), rank r encodes the r-th
contiguous shard of the dataset and the shards are all-gathered, so every rank returns the
features of the whole dataset in dataset order.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ijepa_ds.fileio import atomic_torch_save
from ijepa_ds.models import VisionTransformer
from ijepa_ds.observability.progress import format_eta

POOLS = ("avg", "last4", "grid2", "tokens")
CACHE_FORMAT = 1


@dataclass
class FeatureSet:
    """Features of one dataset split, in dataset order.

    features: [N, F] on CPU (F = ``pool_width``: D for "avg", 4 D for "last4" and "grid2",
    h w D for "tokens"), float32, or float16 for "tokens" (``pool_dtype``); labels: [N] int64.
    """

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"unknown feature pool {pool!r}; expected one of {POOLS}")
    return pool


def pool_features(encoder: VisionTransformer, imgs: torch.Tensor, pool: str) -> torch.Tensor:
    """imgs: [B, C, H, W] -> [B, pool_width(...)]; see the module docstring."""
    check_pool(pool)
    if pool == "avg":
        return encoder(imgs).mean(dim=1)
    if pool == "grid2":
        return _grid_pool(encoder(imgs), imgs.shape[-2:], encoder, side=2)
    if pool == "tokens":
        return encoder(imgs).flatten(1)
    if len(encoder.blocks) < 4:
        raise ValueError(
            f"pool 'last4' needs an encoder with >= 4 blocks, got {len(encoder.blocks)}"
        )
    outputs: list[torch.Tensor] = []
    # Hooks rather than a re-implemented forward: the encoder's own forward (positions, masking,
    # attention kernel) stays the single source of truth.
    handles = [
        block.register_forward_hook(lambda _m, _i, out: outputs.append(out))
        for block in encoder.blocks[-4:]
    ]
    try:
        encoder(imgs)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([encoder.norm(out).mean(dim=1) for out in outputs], dim=-1)


def _grid_pool(
    tokens: torch.Tensor, image_hw: torch.Size, encoder: VisionTransformer, side: int
) -> torch.Tensor:
    """tokens: [B, h w, D] in row-major patch order -> [B, side * side * D]."""
    patch = encoder.patch_embed.patch_size
    h, w = image_hw[0] // patch, image_hw[1] // patch
    if h * w != tokens.shape[1] or min(h, w) < side:
        raise ValueError(
            f"pool 'grid{side}' needs a full patch grid of at least {side}x{side}; got "
            f"{tokens.shape[1]} tokens for a {h}x{w} grid"
        )
    grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
    pooled = nn.functional.adaptive_avg_pool2d(grid, side)  # [B, D, side, side]
    return pooled.permute(0, 2, 3, 1).flatten(1)


def pool_width(pool: str, embed_dim: int, num_patches: int | None = None) -> int:
    """Feature width F of ``pool`` for an encoder of width D = embed_dim (``num_patches`` =
    h w, the eval image's patch count, is needed for "tokens" only)."""
    if check_pool(pool) == "tokens":
        if num_patches is None:
            raise ValueError("pool 'tokens' has width num_patches x embed_dim: give num_patches")
        return num_patches * embed_dim
    return embed_dim * {"avg": 1, "last4": 4, "grid2": 4}[pool]


def pool_dtype(pool: str) -> torch.dtype:
    """How ``pool``'s features are stored: fp16 for "tokens" (kNN only), fp32 otherwise."""
    return torch.float16 if check_pool(pool) == "tokens" else torch.float32


def _shard_indices(n: int) -> tuple[range, int]:
    """This rank's contiguous slice of range(n) and the shard size every rank pads to.

    Ranks take ``ceil(n / world)`` rows each in order (the last ones fewer, or none), so the
    padded shards, gathered back to back, hold the N rows first and the padding after them.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return range(n), n
    shard = -(-n // dist.get_world_size())
    start = min(n, dist.get_rank() * shard)
    return range(start, min(n, start + shard)), shard


GATHER_BLOCK_BYTES = 256 * 2**20  # rows per all_gather call: about this many bytes per rank


def _gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """all_gather every rank's padded shard [shard, ...] into one buffer; returns its first n
    rows [n, ...] (a view: nothing is copied after the gather).

    The shard goes in blocks of about ``GATHER_BLOCK_BYTES``, each gathered straight into its place:
    gloo stages a whole all_gather's output in a flat buffer of its own, which for one call
    over a 5.9 GB tokens matrix would be a second 5.9 GB on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return local[:n]
    world = dist.get_world_size()
    gathered = local.new_empty((world * local.shape[0], *local.shape[1:]))
    parts = gathered.view(world, *local.shape)
    row_bytes = max(1, local[:1].numel() * local.element_size())
    step = max(1, GATHER_BLOCK_BYTES // row_bytes)
    for start in range(0, local.shape[0], step):
        block = slice(start, start + step)
        dist.all_gather([part[block] for part in parts.unbind(0)], local[block])
    return gathered[:n]


@torch.no_grad()
def extract_features(
    encoder: VisionTransformer,
    dataset: Dataset,
    pool: str = "avg",
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    label: str = "",
    progress_every_s: float = 30.0,
) -> FeatureSet:
    """Encode every ``(img, label)`` item of ``dataset`` with the frozen encoder.

    Returns features [N, F] (``pool_dtype(pool)``, CPU) and labels [N]; under an initialised
    process group every rank encodes its shard and receives all N rows. Each batch is written
    into one preallocated shard buffer, gathered in blocks into one buffer of all the rows,
    so a rank holds its shard plus the N rows: for "tokens" at 64 px on 2 ranks 2.95 + 5.9 GB,
    where collecting batches, concatenating, padding and one gloo all_gather held about 4x the
    shard plus 2x the N rows (the 24 GB machine killed it). Rank 0 prints a
    progress line (``features LABEL: n/N images | r img/s | ETA``, n and r over all ranks,
    assuming equal shards) to stderr at most every ``progress_every_s`` seconds.
    """
    check_pool(pool)
    device = torch.device(device) if device is not None else _default_device()
    was_training = encoder.training
    encoder.eval().to(device)
    indices, shard = _shard_indices(len(dataset))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    feats = _shard_buffer(encoder, dataset, pool, device, shard)
    labels = torch.zeros(shard, dtype=torch.long, device=device)
    report = _Progress(label, len(dataset), len(indices), progress_every_s)
    row = 0
    for imgs, targets in loader:
        out = pool_features(encoder, imgs.to(device, non_blocking=True), pool)
        feats[row : row + len(out)] = out
        labels[row : row + len(out)] = torch.as_tensor(targets, dtype=torch.long)
        row += len(out)
        report.advance(len(imgs))
    encoder.train(was_training)
    # gloo gathers CPU tensors, nccl CUDA tensors: gather where the features already live.
    all_feats = _gather_shards(feats, len(dataset))
    del feats
    all_labels = _gather_shards(labels, len(dataset))
    return FeatureSet(all_feats.cpu(), all_labels.cpu())


class _Progress:
    """Extraction progress on rank 0: every rank encodes a shard of about the same size, so
    the whole dataset advances ``total / shard`` images per image of rank 0's shard."""

    def __init__(self, label: str, total: int, shard: int, every_s: float) -> None:
        rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        self.active = rank0 and shard > 0
        self.name = f"features {label}".rstrip()
        self.total, self.scale, self.every_s = total, total / max(shard, 1), every_s
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def advance(self, images: int) -> None:
        self.done += images
        now = time.perf_counter()
        if not self.active or now - self.last < self.every_s:
            return
        self.last = now
        done = min(self.total, round(self.done * self.scale))
        rate = done / max(now - self.start, 1e-9)
        eta = format_eta((self.total - done) / rate) if rate > 0 else "--"
        print(
            f"{self.name}: {done}/{self.total} images ({100 * done / self.total:.0f}%) "
            f"| {rate:.0f} img/s | ETA {eta}",
            file=sys.stderr,
            flush=True,
        )


def _shard_buffer(
    encoder: VisionTransformer, dataset: Dataset, pool: str, device: torch.device, rows: int
) -> torch.Tensor:
    """Zeros [rows, F] of ``pool``'s width and dtype on ``device``, for a shard's features."""
    num_patches = None
    if pool == "tokens" and len(dataset):
        height, width = dataset[0][0].shape[-2:]
        num_patches = (height // encoder.patch_size) * (width // encoder.patch_size)
    shape = (rows, pool_width(pool, encoder.embed_dim, num_patches))
    return torch.zeros(shape, dtype=pool_dtype(pool), device=device)


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 over the architecture numbers and every parameter/buffer (names, shapes, bytes).

    Identical weights loaded from different files share cached features; any changed weight,
    head count or norm epsilon gives another fingerprint.
    """
    digest = hashlib.sha256()
    arch = {
        "class": type(encoder).__name__,
        "num_heads": getattr(encoder, "num_heads", None),
        "patch_size": getattr(encoder, "patch_size", None),
        "pos_interp": getattr(encoder, "pos_interp", None),
        "norm_eps": [m.eps for m in encoder.modules() if isinstance(m, nn.LayerNorm)],
    }
    digest.update(json.dumps(arch, sort_keys=True).encode())
    for name, tensor in encoder.state_dict().items():
        cpu = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(cpu.shape)}:{cpu.dtype}".encode())
        digest.update(cpu.view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
    return digest.hexdigest()


def cache_key(fields: Mapping[str, Any]) -> str:
    """Short hex key of a JSON-able mapping (sorted keys)."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_features(
    encoder: VisionTransformer,
    dataset: Dataset,
    *,
    cache_dir: str | Path | None,
    dataset_id: str,
    split: str,
    pool: str = "avg",
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> FeatureSet:
    """``extract_features`` backed by ``<cache_dir>/features-<key>.pt``.

    The key hashes (encoder fingerprint, pool, dataset_id, split, repr of the dataset's
    ``transform``); the stored file repeats those fields and is used only if they match.
    ``cache_dir=None`` disables the cache. Rank 0 writes the file (atomically, via rename).
    """
    if cache_dir is None:
        return extract_features(encoder, dataset, pool, batch_size, num_workers, device, split)
    fields = {
        "format": CACHE_FORMAT,
        "encoder": encoder_fingerprint(encoder),
        "pool": check_pool(pool),
        "dataset": dataset_id,
        "split": split,
        "transform": repr(getattr(dataset, "transform", None)),
        "size": len(dataset),
    }
    path = Path(cache_dir) / f"features-{cache_key(fields)}.pt"
    hit = _read_cache(path, fields)
    if _all_ranks_agree(hit is not None):
        return hit
    result = extract_features(encoder, dataset, pool, batch_size, num_workers, device, split)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        payload = {"fields": fields, "features": result.features, "labels": result.labels}
        atomic_torch_save(payload, path)
    return result


def _read_cache(path: Path, fields: Mapping[str, Any]) -> FeatureSet | None:
    if not path.is_file():
        return None
    # mmap: pages are read when touched, so a rank that never reads the features (not rank 0
    # in ``ijepa-ds eval``) costs no memory, and rank 0 never holds a second copy.
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if payload.get("fields") != dict(fields):
        return None
    return FeatureSet(payload["features"], payload["labels"])


def _all_ranks_agree(hit: bool) -> bool:
    """True only if every rank found the cache (so all ranks take the same branch)."""
    if not (dist.is_available() and dist.is_initialized()):
        return hit
    flag = torch.tensor(
        [int(hit)], device=_default_device() if dist.get_backend() == "nccl" else "cpu"
    )
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())

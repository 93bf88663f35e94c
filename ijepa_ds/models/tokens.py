"""Token selection helpers shared by the encoder, the predictor and the loss.

Both follow the reference implementation's batch-stacking convention: several masks over the
same batch are stacked along the batch dimension, mask-major (all B samples of mask 0, then all
B samples of mask 1, ...).
"""

from collections.abc import Sequence

import torch

MASK_GATHERS = ("index", "copy")
PAD_INDEX = -1  # a mask entry that selects no token (padding; masks.multiblock.PAD_INDEX)


def check_mask_gather(mask_gather: str) -> str:
    """Return mask_gather if it names a known gather mode, else raise ValueError."""
    if mask_gather not in MASK_GATHERS:
        raise ValueError(f"unknown mask_gather {mask_gather!r}; expected one of {MASK_GATHERS}")
    return mask_gather


def apply_masks(
    x: torch.Tensor,
    masks: Sequence[torch.Tensor],
    mask_gather: str = "index",
    padded: bool | None = None,
) -> torch.Tensor:
    """Gather the tokens each mask keeps and stack the results along the batch.

    Args:
        x: [B, N, D] tokens.
        masks: list of M LongTensors [B, K] of token indices in [0, N), or PAD_INDEX (-1) for
            a padded entry, which gathers token 0 (see ``key_padding``); every mask has the
            same width K (the mask collator guarantees it).
        mask_gather: "index" gathers through a stride-0 expanded view of the mask; "copy"
            first materialises the [B, K, D] int64 index with ``repeat`` as the reference
            does (same result, kept as the baseline of ``bench/fast_paths.py``).
        padded: whether the masks hold PAD_INDEX entries, when the caller knows already
            (saves a host sync on GPU); None = look.

    Returns:
        [M * B, K, D], mask-major: rows m*B .. (m+1)*B - 1 are x gathered with masks[m].
    """
    if len(masks) == 0:
        raise ValueError("apply_masks needs at least one mask")
    check_mask_gather(mask_gather)
    batch, _, dim = x.shape
    num_keep = masks[0].shape[-1]
    padded = has_padding(masks) if padded is None else padded
    gathered = []
    for i, m in enumerate(masks):
        # torch.gather silently accepts an index with a smaller batch; refuse it instead.
        if m.dim() != 2 or m.shape[0] != batch or m.shape[1] != num_keep:
            raise ValueError(
                f"masks[{i}] has shape {tuple(m.shape)}; expected [{batch}, {num_keep}] "
                f"(batch of x, and the same K for every mask)"
            )
        if padded:  # clamped only when padding exists: without it the gather is as before
            m = m.clamp(min=0)
        if mask_gather == "index":
            index = m.unsqueeze(-1).expand(batch, num_keep, dim)
        else:
            index = m.unsqueeze(-1).repeat(1, 1, dim)
        gathered.append(torch.gather(x, dim=1, index=index))
    return torch.cat(gathered, dim=0)


def has_padding(masks: Sequence[torch.Tensor]) -> bool:
    """Whether any of the [B, K] masks holds a PAD_INDEX entry (a host sync for GPU masks).
    Masks on the meta device (shape-only runs) count as unpadded."""
    real = [m for m in masks if m.device.type != "meta"]
    return bool(real) and bool(torch.stack([(m < 0).any() for m in real]).any())  # one sync


def key_padding(masks: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Valid-token mask of the stacked masks, bool [M * B, K] (True = real token), mask-major as
    ``apply_masks`` stacks them; None when no mask holds padding, so that callers keep their
    unpadded code path (and numerics) exactly."""
    if not has_padding(masks):
        return None
    return torch.cat([m >= 0 for m in masks], dim=0)


def length_chunks(masks_enc: Sequence[torch.Tensor], chunks: int) -> list[tuple[torch.Tensor, int]]:
    """The micro-batch sorted by real context length (the longest of a sample's nenc lists)
    and split into ``chunks`` near-equal parts: (sample indices [b_c], the part's longest real
    length) per part. Padding (-1) trails the real indices of every mask row, so a part keeps
    its masks' first ``width`` columns. masks_enc: nenc x [B, K_enc]."""
    lengths = torch.stack([(m >= 0).sum(dim=1) for m in masks_enc]).amax(dim=0)  # [B]
    parts = torch.tensor_split(torch.argsort(lengths, stable=True), min(chunks, len(lengths)))
    widths = torch.stack([lengths[idx].max() for idx in parts]).tolist()  # one host sync
    return list(zip(parts, widths))


def repeat_interleave_batch(x: torch.Tensor, batch_size: int, repeat: int) -> torch.Tensor:
    """Repeat each consecutive chunk of `batch_size` rows `repeat` times, chunk by chunk.

    Args:
        x: [C * batch_size, ...], C chunks of batch_size rows (e.g. one chunk per target mask).
        batch_size: rows per chunk (the per-device batch B).
        repeat: copies of each chunk (the number of context masks).

    Returns:
        [C * repeat * batch_size, ...] with row (c * repeat + r) * batch_size + b equal to
        x[c * batch_size + b]: the reference `repeat_interleave_batch` ordering.
    """
    if batch_size <= 0 or x.shape[0] % batch_size != 0:
        raise ValueError(f"leading size {x.shape[0]} is not a multiple of batch_size={batch_size}")
    chunks = x.shape[0] // batch_size
    rest = x.shape[1:]
    out = x.reshape(chunks, 1, batch_size, *rest).expand(chunks, repeat, batch_size, *rest)
    return out.reshape(chunks * repeat * batch_size, *rest)

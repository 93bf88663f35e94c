"""Settings shared by both mask samplers: the patch grid, the step's sample count, the seed and
the block-shape ranges, validated once by the subclass's own rules."""

from __future__ import annotations

from abc import ABC, abstractmethod


class BlockMaskSampler(ABC):
    """Common construction of ``MultiBlockMaskSampler`` and ``ReferenceMaskSampler``.

    grid_size: (H, W) patches; global_batch_size: samples per optimizer step; seed: the run's
    seed; enc/pred_mask_scale: block area ranges (fractions of H*W); aspect_ratio: target
    height/width range; nenc/npred: context/target blocks per sample; min_keep: fewest patches
    per mask; allow_overlap: keep target patches in the context. ``_validate`` (each sampler's
    own feasibility rules) raises ``ValueError`` before anything is stored.
    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        global_batch_size: int,
        seed: int,
        enc_mask_scale: tuple[float, float] = (0.85, 1.0),
        pred_mask_scale: tuple[float, float] = (0.15, 0.2),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        nenc: int = 1,
        npred: int = 4,
        min_keep: int = 10,
        allow_overlap: bool = False,
    ) -> None:
        self.grid_h, self.grid_w = (int(v) for v in grid_size)
        self._validate(
            enc_mask_scale, pred_mask_scale, aspect_ratio, nenc, npred, min_keep, allow_overlap
        )
        if int(global_batch_size) != global_batch_size or global_batch_size < 1:
            raise ValueError(f"global_batch_size={global_batch_size!r} must be an integer >= 1")
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.enc_mask_scale = tuple(float(v) for v in enc_mask_scale)
        self.pred_mask_scale = tuple(float(v) for v in pred_mask_scale)
        self.aspect_ratio = tuple(float(v) for v in aspect_ratio)
        self.nenc, self.npred = int(nenc), int(npred)
        self.min_keep = int(min_keep)
        self.allow_overlap = bool(allow_overlap)

    @abstractmethod
    def _validate(self, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep, overlap):
        """Raise ``ValueError`` when the sampler cannot draw these settings in bounded time."""

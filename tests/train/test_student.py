"""IJEPAStudent's length-sorted chunks (model.context_chunks): the same predictions and
gradients as one padded forward, and chunks only where the config can pad."""

from __future__ import annotations

import copy

import pytest
import torch

from ijepa_ds.config import load_config
from ijepa_ds.masks import context_may_pad
from ijepa_ds.models import VisionTransformer, VisionTransformerPredictor
from ijepa_ds.train.student import IJEPAStudent
from ijepa_ds.train.trainer import build_student

B, GRID = 7, 16  # samples, patches of a 4x4 grid
TOL = 2e-6  # relative to the largest entry: fp32, only the order of some sums differs


def _student(chunks: int) -> IJEPAStudent:
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4)
    pred = VisionTransformerPredictor(
        grid_size=(4, 4), embed_dim=32, predictor_embed_dim=16, depth=2, num_heads=4
    )
    return IJEPAStudent(enc, pred, context_chunks=chunks)


def _masks(lengths: list[list[int]], width: int, seed: int) -> list[torch.Tensor]:
    """Per list j a LongTensor [B, width]: lengths[b][j] sorted distinct indices, -1 after."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for j in range(len(lengths[0])):
        m = torch.full((len(lengths), width), -1, dtype=torch.long)
        for b, row in enumerate(lengths):
            m[b, : row[j]] = torch.randperm(GRID, generator=gen)[: row[j]].sort().values
        masks.append(m)
    return masks


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL * want.abs().max().item()


@pytest.mark.parametrize("chunks", [2, 3, 7, 9])
def test_chunked_forward_and_backward_equal_one_padded_forward(chunks: int) -> None:
    ctx_len = [[9, 4], [3, 6], [11, 11], [5, 2], [7, 7], [4, 10], [6, 3]]  # [B][nenc]
    masks_enc = _masks(ctx_len, width=11, seed=1)
    masks_pred = _masks([[4, 4, 4]] * B, width=4, seed=2)  # targets: never padded
    imgs = torch.randn(B, 3, 16, 16)
    one, split = _student(1), _student(chunks)
    split.load_state_dict(one.state_dict())
    want, got = one(imgs, masks_enc, masks_pred), split(imgs, masks_enc, masks_pred)
    assert want.shape == (B * 2 * 3, 4, 32)
    _close(got, want)
    weights = torch.randn_like(want)
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, p_one), p_split in zip(one.named_parameters(), split.parameters()):
        if not p_one.requires_grad:  # the fixed sin-cos positions
            continue
        assert p_split.grad is not None, name
        _close(p_split.grad, p_one.grad)


def test_unpadded_masks_give_the_same_result_chunked() -> None:
    """Chunks run whatever the masks hold (the count may not depend on them: ZeRO-3)."""
    masks_enc = _masks([[6]] * B, width=6, seed=3)
    masks_pred = _masks([[4]] * B, width=4, seed=4)
    imgs = torch.randn(B, 3, 16, 16)
    one, split = _student(1), _student(3)
    split.load_state_dict(one.state_dict())
    _close(split(imgs, masks_enc, masks_pred), one(imgs, masks_enc, masks_pred))


def test_context_chunks_must_be_positive() -> None:
    with pytest.raises(ValueError, match="context_chunks must be >= 1"):
        _student(0)


@pytest.mark.parametrize(
    "overrides, pads",
    [
        (["mask.context_policy=keep_all"], True),
        (["mask.context_policy=global_min"], False),
        (["mask.context_policy=keep_all", "mask.sampler=reference"], False),
        (["mask.context_policy=group_min", "mask.group_size=64", "data.batch_size=64"], False),
        (["mask.context_policy=group_min", "mask.group_size=64", "data.batch_size=32"], False),
        (["mask.context_policy=group_min", "mask.group_size=64", "data.batch_size=48"], True),
        (["mask.context_policy=group_min", "mask.group_size=32", "data.batch_size=64"], True),
        (  # one group is the whole step: nothing to pad
            ["mask.context_policy=group_min", "mask.group_size=256", "data.batch_size=48",
             "data.global_batch_size=96"],
            False,
        ),
    ],
)  # fmt: skip
def test_context_may_pad(overrides: list[str], pads: bool) -> None:
    assert context_may_pad(load_config("fmnist_tiny", overrides)) is pads


def test_build_student_chunks_only_where_masks_can_pad() -> None:
    overrides = ["mask.context_policy=keep_all", "model.context_chunks=3"]
    keep_all = load_config("fmnist_tiny", overrides)
    assert build_student(keep_all).context_chunks == 3
    global_min = copy.deepcopy(keep_all)
    global_min.mask.context_policy = "global_min"
    assert build_student(global_min).context_chunks == 1

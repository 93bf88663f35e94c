"""Last-block pruning (query_from) is exact, and attn_impl "auto" picks the right kernel."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from ijepa_ds.backend.act_ckpt import apply_activation_checkpointing
from ijepa_ds.config import load_config
from ijepa_ds.models import VisionTransformerPredictor, apply_attn_impl
from ijepa_ds.models.from_config import build_predictor_from_config
from ijepa_ds.models.layers import _LOGGED_AUTO, Attention, Block, resolve_attn_impl

B, NUM_PATCHES, DIM, PRED_DIM = 2, 16, 32, 16
# Relative to the largest entry of the tensors compared (a few float32 ulps): pruning changes
# the order of some float sums (a bias gradient no longer adds the dropped rows' zeros).
TOL = 1e-6


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return (got - want).abs().max().item() <= TOL * want.abs().max().item()


def _grads(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    return {**grads, "input": x.grad}


def _assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every gradient (all parameters and the input) within TOL of the largest gradient entry."""
    assert got.keys() == want.keys()
    scale = max(g.abs().max().item() for g in want.values())
    for name in want:
        assert want[name].abs().sum() > 0, name  # a real gradient, not an unused parameter
        assert (got[name] - want[name]).abs().max().item() <= TOL * scale, name


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_block_query_from_equals_the_kept_rows_of_the_full_block(attn_impl: str) -> None:
    torch.manual_seed(0)
    full = Block(DIM, num_heads=4, drop_path=0.3, attn_impl=attn_impl).train()
    pruned = copy.deepcopy(full)
    x = torch.randn(3, 11, DIM)
    weight = torch.randn(3, 7, DIM)  # a loss that is not symmetric in the rows
    x_full, x_pruned = x.clone().requires_grad_(), x.clone().requires_grad_()

    torch.manual_seed(1)  # drop path draws one Bernoulli per sample either way
    out_full = full(x_full)[:, 4:]
    torch.manual_seed(1)
    out_pruned = pruned(x_pruned, query_from=4)
    assert out_pruned.shape == (3, 7, DIM)
    assert _close(out_pruned, out_full)
    (out_full * weight).sum().backward()
    (out_pruned * weight).sum().backward()
    _assert_grads_close(_grads(pruned, x_pruned), _grads(full, x_full))


def test_query_from_none_and_zero_keep_every_row_and_bad_values_raise() -> None:
    torch.manual_seed(2)
    attn = Attention(DIM, num_heads=4).eval()
    x = torch.randn(2, 5, DIM)
    assert torch.equal(attn(x, 0), attn(x))
    assert attn(x, 4).shape == (2, 1, DIM)
    for bad in (5, -1):
        with pytest.raises(ValueError, match=f"query_from={bad} must lie in"):
            attn(x, bad)


def _predictor_pair(attn_impl: str, every: int):
    torch.manual_seed(3)
    unpruned = VisionTransformerPredictor(
        num_patches=NUM_PATCHES,
        embed_dim=DIM,
        predictor_embed_dim=PRED_DIM,
        depth=3,
        num_heads=4,
        attn_impl=attn_impl,
        prune_last_block=False,
    )
    pruned = copy.deepcopy(unpruned)
    pruned.prune_last_block = True
    # every=1 checkpoints the pruned last block too (its forward takes query_from).
    assert apply_activation_checkpointing(pruned.predictor_blocks, every) == (3 if every else 0)
    return unpruned, pruned


@pytest.mark.parametrize("every", [0, 1])
@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_pruned_predictor_equals_unpruned_outputs_and_gradients(attn_impl: str, every: int):
    unpruned, pruned = _predictor_pair(attn_impl, every)
    masks_x = [torch.stack([torch.randperm(NUM_PATCHES)[:7] for _ in range(B)]) for _ in range(2)]
    masks = [torch.stack([torch.randperm(NUM_PATCHES)[:4] for _ in range(B)]) for _ in range(3)]
    context = torch.randn(2 * B, 7, DIM)
    outs, grads = [], []
    for model in (unpruned, pruned):
        x = context.clone().requires_grad_()
        out = model(x, masks_x, masks)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).mean().backward()
        outs.append(out)
        grads.append(_grads(model, x))
    assert outs[1].shape == outs[0].shape == (3 * 2 * B, 4, DIM)
    assert _close(outs[1], outs[0])
    _assert_grads_close(grads[1], grads[0])
    assert "mask_token" in grads[0] and "predictor_blocks.2.attn.qkv.weight" in grads[0]


def test_config_switch_reaches_the_predictor() -> None:
    small = ["model.pred_emb_dim=16", "model.pred_num_heads=4", "model.pred_depth=1"]
    for value, expected in (("true", True), ("false", False)):
        cfg = load_config(None, [f"model.predictor_prune_last={value}", *small])
        assert build_predictor_from_config(cfg).prune_last_block is expected


def test_resolve_attn_impl_rule_and_one_log_line_per_choice() -> None:
    assert resolve_attn_impl("auto", "cpu", torch.bfloat16) == "eager"
    assert resolve_attn_impl("auto", "cpu", torch.float32) == "sdpa"
    assert resolve_attn_impl("auto", "cuda", torch.bfloat16) == "sdpa"
    assert resolve_attn_impl("sdpa", "cpu", torch.bfloat16) == "sdpa"
    assert resolve_attn_impl("eager", "cuda", torch.float32) == "eager"
    with pytest.raises(ValueError, match="unknown attn_impl 'flash'"):
        resolve_attn_impl("flash", "cpu", torch.float32)

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ijepa_ds.models.layers")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    _LOGGED_AUTO.clear()
    try:
        for _ in range(3):
            resolve_attn_impl("auto", "cpu", torch.bfloat16)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [r.getMessage() for r in records] == [
        "attn_impl=auto: eager attention for torch.bfloat16 activations on cpu"
    ]


@pytest.mark.parametrize(("dtype", "kernel"), [(torch.bfloat16, "eager"), (torch.float32, "sdpa")])
def test_auto_attention_runs_the_resolved_kernel_on_cpu(dtype: torch.dtype, kernel: str) -> None:
    torch.manual_seed(4)
    auto = Attention(DIM, num_heads=4, attn_impl="auto").to(dtype).eval()
    fixed = copy.deepcopy(auto)
    other = copy.deepcopy(auto)
    apply_attn_impl(fixed, kernel)
    apply_attn_impl(other, "sdpa" if kernel == "eager" else "eager")
    x = torch.randn(2, 9, DIM, dtype=dtype)
    with torch.no_grad():
        got, want, alt = auto(x), fixed(x), other(x)
    assert torch.equal(got, want)
    # The two kernels round differently in bf16, so the match above is the kernel's own.
    if dtype == torch.bfloat16:
        assert not torch.equal(got, alt)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`

"""bench.context_policy counts the attention FLOPs that torch's counter misses on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.context_policy import CPU_SDPA_FLOPS, step_variants

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("padded", [False, True])
def test_cpu_attention_forward_and_backward_flops_are_counted(padded):
    b, h, n, e = 2, 3, 17, 8
    q, k, v = (torch.randn(b, h, n, e, requires_grad=True) for _ in range(3))
    keys = torch.ones(b, 1, 1, n, dtype=torch.bool)
    keys[1, ..., 11:] = False  # the second sample's last 6 keys are padding
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
    with counter:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys if padded else None)
        out.sum().backward()
    one_bmm = 2 * b * h * n * n * e  # multiply-adds of one [n, e] x [e, n] product, x2
    # forward: scores and weighted values (2 products); backward: scores again, dV, dP,
    # dQ, dK (5). Padded keys are computed like any other, which is what padding costs.
    assert counter.get_total_flops() == 7 * one_bmm


def test_every_step_variant_is_named_once_and_global_min_is_the_baseline():
    names = [name for name, _, _ in step_variants()]
    assert names[0] == "global_min" and len(set(names)) == len(names)
    assert {policy for _, policy, _ in step_variants()} == {"global_min", "group_min", "keep_all"}

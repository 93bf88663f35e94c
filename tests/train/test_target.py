"""``TargetEncoder`` without ZeRO-3: a deep fp32 copy, the EMA on fp32 sources, full state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ijepa_ds.train.target import TargetEncoder

pytestmark = pytest.mark.fast


def _encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))


def _expected(target: dict, student: dict, momentum: float) -> dict:
    """The EMA as the reference writes it, one tensor at a time."""
    return {
        k: value.clone().mul_(momentum).add_(student[k], alpha=1 - momentum)
        for k, value in target.items()
    }


def test_target_is_a_detached_fp32_copy_until_the_update():
    student = _encoder()
    target = TargetEncoder(student, partitioned=False)
    target.bind(student)
    before = target.full_state_dict()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in target.full_state_dict().items())
    assert all(not p.requires_grad for p in target.module.parameters())


@pytest.mark.parametrize("momentum", [0.996, 0.5, 1.0, 0.0])
def test_ema_update_matches_the_formula_bit_for_bit(momentum):
    student = _encoder()
    target = TargetEncoder(student, partitioned=False)
    target.bind(student)
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(torch.randn_like(p))
    start = target.full_state_dict()
    target.ema_update(momentum)
    expected = _expected(start, dict(student.state_dict()), momentum)
    got = target.full_state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_bf16_student_reads_its_fp32_master_not_the_rounded_weight():
    student = _encoder()
    masters = {id(p): p.detach().clone() + 0.123 for p in student.parameters()}
    master_by_name = {name: masters[id(p)] for name, p in student.named_parameters()}
    target = TargetEncoder(student, partitioned=False)
    student.to(torch.bfloat16)  # parameters keep their identity
    target.bind(student, fp32_masters=masters)
    start = target.full_state_dict()
    target.ema_update(0.9)
    expected = _expected(start, master_by_name, 0.9)
    assert all(torch.equal(target.full_state_dict()[k], v) for k, v in expected.items())
    assert target.module[0].weight.dtype == torch.float32


def test_frozen_student_parameters_are_not_averaged():
    student = _encoder()
    student[1].requires_grad_(False)
    target = TargetEncoder(student, partitioned=False)
    target.bind(student)
    with torch.no_grad():
        student[1].weight.fill_(7.0)
    target.ema_update(0.0)
    assert not torch.equal(target.module[1].weight, student[1].weight)
    assert torch.equal(target.module[0].weight, student[0].weight)


def test_update_before_bind_is_an_error():
    with pytest.raises(RuntimeError, match="bind"):
        TargetEncoder(_encoder(), partitioned=False).ema_update(0.99)


def test_full_state_round_trip_and_forward_in_fp32():
    a, b = TargetEncoder(_encoder(0), False), TargetEncoder(_encoder(1), False)
    b.load_full_state_dict(a.full_state_dict(), rank=0)
    x = torch.randn(2, 6)
    assert torch.equal(a(x), b(x)) and a(x).dtype == torch.float32
    assert a.local_numel() == sum(p.numel() for p in a.module.parameters())

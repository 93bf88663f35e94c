"""Linear probe: recovers a clean linear signal, stays at chance on random labels, seeded."""

from __future__ import annotations

import pytest
import torch

from ijepa_ds.eval.features import FeatureSet
from ijepa_ds.eval.linear import ProbeConfig, linear_probe, split_train_val

CLASSES = 4


def linear_task(n: int, seed: int, random_labels: bool = False) -> FeatureSet:
    """n rows of 16 features whose label is the argmax of a fixed linear map (or random).

    Rows closer than a margin of 1 to a decision boundary are dropped, so the linear signal
    is clean; features are off-centre and scaled (what the probe's BatchNorm is for).
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(16, CLASSES, generator=torch.Generator().manual_seed(123))
    z = torch.randn(4 * n, 16, generator=gen)
    scores = (z @ w).sort(dim=1, descending=True).values
    z = z[scores[:, 0] - scores[:, 1] > 1.0][:n]
    y = torch.randint(0, CLASSES, (n,), generator=gen) if random_labels else (z @ w).argmax(1)
    return FeatureSet(z * 3.0 + 5.0, y)


FAST = ProbeConfig(lrs=(0.01, 0.1), wds=(0.0, 5e-4), epochs=8, batch_size=64)


def test_probe_recovers_a_clean_linear_signal():
    result = linear_probe(linear_task(800, 0), linear_task(400, 1), FAST)
    assert result.test_top1 > 97.0
    assert result.num_train + result.num_val == 800 and result.num_test == 400
    assert result.num_val == 80
    assert result.lr in FAST.lrs and result.wd in FAST.wds and 1 <= result.epochs <= 8
    # Every (lr, wd) validated every epoch; the chosen row is the best of them.
    assert len(result.sweep) == 2 * 2 * 8
    assert result.val_top1 == max(r["val_top1"] for r in result.sweep)


def test_probe_is_at_chance_on_random_labels():
    train, test = linear_task(800, 0, random_labels=True), linear_task(2000, 1, random_labels=True)
    result = linear_probe(train, test, FAST)
    assert 100 / CLASSES - 5 < result.test_top1 < 100 / CLASSES + 5


def test_adamw_and_no_batchnorm_full_batch_also_learn():
    cfg = ProbeConfig(
        lrs=(0.01, 0.1),
        wds=(0.0,),
        epochs=300,
        batch_size=0,
        optimizer="adamw",
        batchnorm=False,
        val_every=50,
    )
    result = linear_probe(linear_task(800, 0), linear_task(400, 1), cfg)
    assert result.test_top1 > 95.0
    assert sorted({r["epoch"] for r in result.sweep}) == [50, 100, 150, 200, 250, 300]


def test_probe_is_deterministic_per_seed():
    train, test = linear_task(300, 0), linear_task(100, 1)
    a = linear_probe(train, test, FAST)
    b = linear_probe(train, test, FAST)
    assert a.to_dict() == b.to_dict()


def test_val_every_zero_validates_only_at_the_end():
    cfg = ProbeConfig(lrs=(0.1,), wds=(0.0,), epochs=3, val_every=0)
    result = linear_probe(linear_task(100, 0), linear_task(50, 1), cfg)
    assert [r["epoch"] for r in result.sweep] == [3]


def test_split_is_seeded_disjoint_and_complete():
    tr, va = split_train_val(50, 0.2, seed=3)
    assert len(va) == 10 and len(tr) == 40
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(50))
    tr2, va2 = split_train_val(50, 0.2, seed=3)
    assert torch.equal(va, va2)
    assert not torch.equal(va, split_train_val(50, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(50, 1.0, seed=0)

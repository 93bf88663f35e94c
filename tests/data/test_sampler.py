"""The global position stream: sharding, permutations, resume and re-sharding."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ijepa_ds.data.sampler import GlobalPositionSampler, PositionMap, epoch_permutation, mix_seed

N, G, SEED = 50, 16, 3  # 3 optimizer steps per epoch, 2 samples dropped per epoch


def rank_batches(world: int, b: int, rank: int, **kw) -> list[list[int]]:
    sampler = GlobalPositionSampler(N, G, b, rank, world, SEED, **kw)
    return list(sampler)


def step_positions(world: int, b: int, steps: int) -> list[list[int]]:
    """For each optimizer step, the positions consumed by all ranks and micro-steps (in order)."""
    accum = G // (b * world)
    per_rank = [rank_batches(world, b, r, max_steps=steps) for r in range(world)]
    out = []
    for s in range(steps):
        seen = []
        for r in range(world):
            for batch in per_rank[r][s * accum : (s + 1) * accum]:
                assert len(batch) == b
                seen.extend(batch)
        out.append(seen)
    return out


@pytest.mark.parametrize("world,b", [(1, 8), (2, 4), (4, 4), (2, 8), (4, 1)])
def test_shards_are_disjoint_and_cover_each_step(world: int, b: int) -> None:
    for s, seen in enumerate(step_positions(world, b, steps=7)):
        assert len(seen) == len(set(seen)), "a position was given to two shards"
        assert sorted(seen) == list(range(s * G, (s + 1) * G))


def test_micro_step_layout_matches_contract() -> None:
    # W=2, b=4, A=2: micro-step m of rank r gets s*G + (m*W + r)*b + [0, b).
    batches = rank_batches(2, 4, 1, max_steps=2)
    assert batches == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 22, 23], [28, 29, 30, 31]]


def test_resharding_keeps_the_samples_of_every_step() -> None:
    configs = [(1, 8), (2, 4), (4, 4)]  # A = 2, 2, 1
    per_config = [step_positions(w, b, steps=8) for w, b in configs]
    pmap = PositionMap(N, G, SEED)
    for s in range(8):
        position_sets = [set(steps[s]) for steps in per_config]
        assert position_sets[0] == position_sets[1] == position_sets[2]
        index_sets = [{pmap.index_of(p) for p in steps[s]} for steps in per_config]
        assert index_sets[0] == index_sets[1] == index_sets[2]


def test_one_permutation_per_epoch_shared_by_ranks() -> None:
    maps = [PositionMap(N, G, SEED) for _ in range(4)]  # one per rank, built independently
    epoch_len = maps[0].samples_per_epoch
    assert epoch_len == 48
    for epoch in range(3):
        positions = range(epoch * epoch_len, (epoch + 1) * epoch_len)
        per_rank = [[m.index_of(p) for p in positions] for m in maps]
        assert all(indices == per_rank[0] for indices in per_rank)
        assert len(set(per_rank[0])) == epoch_len, "an index repeats within an epoch"
        assert set(per_rank[0]) <= set(range(N))
        expected = epoch_permutation(N, SEED, epoch)[:epoch_len].tolist()
        assert per_rank[0] == expected
    assert not torch.equal(epoch_permutation(N, SEED, 0), epoch_permutation(N, SEED, 1))
    assert not torch.equal(epoch_permutation(N, SEED, 0), epoch_permutation(N, SEED + 1, 0))
    assert sorted(epoch_permutation(N, SEED, 5).tolist()) == list(range(N))


def test_position_map_cache_does_not_change_answers() -> None:
    pmap = PositionMap(N, G, SEED)
    order = [0, 100, 49, 200, 1, 47, 48, 150, 3]  # jumps between epochs 0..4 and back
    got = [pmap.index_of(p) for p in order]
    assert got == [PositionMap(N, G, SEED).index_of(p) for p in order]
    assert len(pmap._cache) <= 2
    with pytest.raises(ValueError, match="non-negative"):
        pmap.index_of(-1)


@pytest.mark.parametrize("start", [1, 2, 4, 5])  # 1, 2, 4, 5 are mid-epoch (I = 3)
def test_start_step_yields_the_tail_of_the_stream(start: int) -> None:
    accum = 2
    full = rank_batches(2, 4, 1, max_steps=9)
    tail = rank_batches(2, 4, 1, start_step=start, max_steps=9)
    assert tail == full[start * accum :]
    endless = GlobalPositionSampler(N, G, 4, 1, 2, SEED, start_step=start)
    assert list(itertools.islice(endless, len(tail))) == tail


def test_lengths_and_epochs() -> None:
    sampler = GlobalPositionSampler(N, G, 4, 0, 2, SEED, start_step=2, max_steps=9)
    assert sampler.iterations_per_epoch == 3
    assert sampler.accumulation_steps == 2
    assert len(sampler) == 14 == len(list(sampler))
    assert [sampler.epoch_of(s) for s in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(TypeError, match="no length"):
        len(GlobalPositionSampler(N, G, 4, 0, 2, SEED))
    assert list(GlobalPositionSampler(N, G, 4, 0, 2, SEED, start_step=9, max_steps=9)) == []


def test_validation_errors_name_the_fields() -> None:
    with pytest.raises(
        ValueError, match=r"data\.global_batch_size \(16\).*data\.batch_size \(3\).*world size"
    ):
        GlobalPositionSampler(N, 16, 3, 0, 2, SEED)
    with pytest.raises(ValueError, match=r"world size \(3\)"):
        GlobalPositionSampler(N, 16, 4, 0, 3, SEED)
    with pytest.raises(ValueError, match=r"12 samples, fewer than data\.global_batch_size \(16\)"):
        GlobalPositionSampler(12, 16, 4, 0, 2, SEED)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        GlobalPositionSampler(N, 16, 4, 2, 2, SEED)
    with pytest.raises(ValueError, match="must all be positive"):
        GlobalPositionSampler(N, 16, 0, 0, 2, SEED)
    with pytest.raises(ValueError, match=r"max_steps \(3\) is before start_step \(4\)"):
        GlobalPositionSampler(N, 16, 4, 0, 2, SEED, start_step=4, max_steps=3)


def test_mix_seed_separates_tuples() -> None:
    seeds = {mix_seed(a, b) for a in range(20) for b in range(20)}
    assert len(seeds) == 400
    assert all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(1, 0) != mix_seed(0, 1)
    assert mix_seed(-1, 5) == mix_seed(2**64 - 1, 5)


@settings(max_examples=40, deadline=None)
@given(
    world=st.integers(1, 4),
    b=st.integers(1, 3),
    accum=st.integers(1, 3),
    extra=st.integers(0, 40),
    start=st.integers(0, 6),
    seed=st.integers(0, 2**40),
)
def test_stream_invariants_hold_for_any_split(world, b, accum, extra, start, seed) -> None:
    g = world * b * accum
    n = g + extra
    stop = start + 5
    samplers = [
        GlobalPositionSampler(n, g, b, r, world, seed, start_step=start, max_steps=stop)
        for r in range(world)
    ]
    streams = [list(s) for s in samplers]
    for k, s in enumerate(range(start, stop)):
        seen = [
            p for stream in streams for p in itertools.chain(*stream[k * accum : (k + 1) * accum])
        ]
        assert sorted(seen) == list(range(s * g, (s + 1) * g))
    pmap = samplers[0].position_map
    epoch_len = (n // g) * g
    first_epoch = [pmap.index_of(p) for p in range(epoch_len)]
    assert len(set(first_epoch)) == epoch_len


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`

"""``TrainState``: a weights_only-safe round trip, clear errors, and exact RNG restore."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from ijepa_ds.checkpoint.state import TrainState, capture_rng, restore_rng

pytestmark = pytest.mark.fast


def _state(**changes) -> TrainState:
    values = dict(
        step=12, epoch=1, cursor=12 * 16, global_batch_size=16, world_size=2, zero_stage=3,
        precision="fp32", config_hash="abc", rng=[capture_rng()], versions={"torch": "x"},
        model={"encoder": {"embed_dim": 192}},
    )  # fmt: skip
    return TrainState(**{**values, **changes})


def _round_trip(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what resume reads


def test_round_trip_through_a_weights_only_load():
    state = _state()
    back = TrainState.from_state_dict(_round_trip(state.state_dict()))
    assert back.step == 12 and back.cursor == 192 and back.model == state.model
    assert torch.equal(back.rng[0]["torch"], state.rng[0]["torch"])


def test_a_checkpoint_from_before_the_model_record_loads_with_an_empty_one():
    old = _state().state_dict()
    del old["model"]
    assert TrainState.from_state_dict(old).model == {}


def test_missing_fields_and_wrong_types_are_named():
    broken = _state().state_dict()
    del broken["cursor"], broken["zero_stage"]
    with pytest.raises(ValueError, match=r"lacks \['cursor', 'zero_stage'\]"):
        TrainState.from_state_dict(broken)
    with pytest.raises(ValueError, match="is a list, not a dict"):
        TrainState.from_state_dict([])


def test_restored_rng_replays_every_generator_exactly():
    state = _round_trip(capture_rng())
    first = (torch.rand(4), np.random.rand(3), random.random())
    restore_rng(state)
    again = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]

"""check_finite stops on NaN/inf with an actionable message."""

from __future__ import annotations

import math

import pytest
import torch

from ijepa_ds.observability.nonfinite import NonFiniteLossError, check_finite


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_raises_for_nonfinite_with_step_value_and_advice(value: float) -> None:
    expected = rf"non-finite loss {value} at optimizer step 1234,"
    with pytest.raises(NonFiniteLossError, match=expected) as e:
        check_finite(value, step=1234)
    assert isinstance(e.value, RuntimeError)
    assert e.value.step == 1234 and (e.value.value == value or math.isnan(e.value.value))
    message = str(e.value)
    assert "learning rate" in message and "data" in message and "loss.on_nonfinite=skip" in message


def test_accepts_finite_values_and_tensors() -> None:
    for value in (0.0, -3.5, 1e30, torch.tensor(0.25), torch.tensor(2.0, dtype=torch.bfloat16)):
        check_finite(value, step=1)
    with pytest.raises(NonFiniteLossError, match="at optimizer step 7"):
        check_finite(torch.tensor(float("nan")), step=7)

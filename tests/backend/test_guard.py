"""The DeepSpeed guard: tested range and the internals the backend relies on."""

import pytest

from ijepa_ds.backend.guard import (
    ALLOW_VAR,
    PRIVATE,
    TESTED,
    DeepSpeedVersionError,
    check_deepspeed,
    check_deepspeed_version,
    missing_internals,
    require_attribute,
)

pytestmark = pytest.mark.fast


def test_installed_deepspeed_passes_and_has_every_internal():
    assert missing_internals() == []
    assert check_deepspeed() == check_deepspeed()  # cached, same version


def test_untested_version_is_refused_naming_it_and_the_range():
    with pytest.raises(DeepSpeedVersionError, match=r"deepspeed 0\.20\.1 is untested.*>=0\.19\.8"):
        check_deepspeed_version("0.20.1", env={})
    with pytest.raises(DeepSpeedVersionError, match=ALLOW_VAR):
        check_deepspeed_version("0.19.7", env={})


def test_untested_version_only_warns_when_allowed():
    with pytest.warns(UserWarning, match="0.20.1 is untested"):
        check_deepspeed_version("0.20.1", env={ALLOW_VAR: "1"})


def test_missing_internal_is_an_error_even_when_allowed():
    gone = (*PRIVATE, ("deepspeed.utils", "no_such_helper", "a future caller"))
    with pytest.raises(DeepSpeedVersionError, match=r"deepspeed.utils.no_such_helper \(a future"):
        check_deepspeed_version(TESTED[0], required=gone, env={ALLOW_VAR: "1"})
    absent_module = (("deepspeed.not_a_module", "x", "why"),)
    assert "cannot import" in missing_internals(absent_module)[0]


def test_require_attribute_names_the_owner_and_attribute():
    class Optimizer:
        optimizer = "inner"

    assert require_attribute(Optimizer(), "optimizer", "Stage3") == "inner"
    with pytest.raises(DeepSpeedVersionError, match=r"Stage3 has no attribute 'fp32_flat'"):
        require_attribute(Optimizer(), "fp32_flat", "Stage3")

"""Target encoder -> a real timm VisionTransformer: strict load, same features, same pooling."""

from __future__ import annotations

import pytest
import torch

from ijepa_ds.interop.consolidated import build_models, make_consolidated
from ijepa_ds.interop.reference_export import from_reference
from ijepa_ds.interop.timm_export import (
    build_timm_model,
    export_timm,
    load_timm_export,
    timm_state_dict,
)
from tests.interop.helpers import encoder_kwargs, predictor_kwargs_for, tiny_models

TOL = 1e-5


def _consolidated(enc_kw: dict) -> dict:
    pred_kw = predictor_kwargs_for(enc_kw)
    encoder, predictor = tiny_models(enc_kw, pred_kw)
    with torch.no_grad():  # non-trivial LayerNorm affines, so a wrong norm placement shows
        for name, p in encoder.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    state = encoder.state_dict()
    return make_consolidated(state, predictor.state_dict(), state, enc_kw, pred_kw)


def _compare(consolidated: dict, timm_model, images: torch.Tensor) -> None:
    _, _, target = build_models(consolidated)
    timm_model.eval()
    with torch.no_grad():
        ours = target(images)
        features = timm_model.forward_features(images)
        pooled = timm_model.forward_head(features, pre_logits=True)
        assert features.shape == ours.shape
        assert (features - ours).abs().max() < TOL
        assert (pooled - ours.mean(dim=1)).abs().max() < TOL
        assert (timm_model(images) - ours.mean(dim=1)).abs().max() < TOL  # num_classes=0


def test_fixture_target_encoder_in_timm(reference_fixture_dir, reference_expected):
    consolidated = from_reference(reference_fixture_dir / "official_tiny.pth.tar", num_heads=3)
    model = build_timm_model(consolidated["encoder_kwargs"])
    model.load_state_dict(timm_state_dict(consolidated["target_encoder"]), strict=True)
    _compare(consolidated, model, reference_expected["imgs"])
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(reference_expected["imgs"]), True)
    assert (pooled - reference_expected["target_encoder_avgpool"]).abs().max() < TOL


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_exported_file_loads_into_timm(tmp_path, suffix):
    enc_kw = encoder_kwargs(img_size=(16, 24), in_chans=1, mlp_ratio=3.0, norm_eps=1e-5)
    consolidated = _consolidated(enc_kw)
    path = export_timm(consolidated, tmp_path / f"target{suffix}")
    state, kwargs = load_timm_export(path)
    assert kwargs["norm_eps"] == 1e-5 and kwargs["fc_norm"] is False and kwargs["in_chans"] == 1
    model = build_timm_model(kwargs)
    model.load_state_dict(state, strict=True)
    _compare(consolidated, model, torch.randn(3, 1, 16, 24))


def test_the_norm_epsilon_matters(tmp_path):
    """Guards the test above: timm's default LayerNorm (eps 1e-6) would differ at eps 1e-2."""
    enc_kw = encoder_kwargs(img_size=(16, 16), depth=1, norm_eps=1e-2)
    consolidated = _consolidated(enc_kw)
    model = build_timm_model({**enc_kw, "norm_eps": 1e-6})
    model.load_state_dict(timm_state_dict(consolidated["target_encoder"]), strict=True)
    with pytest.raises(AssertionError):
        _compare(consolidated, model, torch.randn(2, 3, 16, 16))


def test_export_refuses_unknown_suffix(tmp_path):
    enc_kw = encoder_kwargs(img_size=(16, 16), depth=1)
    with pytest.raises(ValueError, match=r"model\.bin: a timm export ends in"):
        export_timm(_consolidated(enc_kw), tmp_path / "model.bin")

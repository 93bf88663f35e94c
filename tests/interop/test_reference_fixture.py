"""Proof against the reference implementation: load its checkpoint, reproduce its outputs.

The fixture (../shared/fixtures/official_ijepa, see its README) was written by the published
reference code: a checkpoint after three training steps plus the outputs of its encoder,
target encoder, predictor and loss for fixed images and masks.
"""

import pickle
from pathlib import Path

import pytest
import torch

from ijepa_ds.interop import (
    ReferenceCheckpointError,
    load_reference_checkpoint,
    strip_module_prefix,
)
from ijepa_ds.loss import jepa_loss, make_targets
from ijepa_ds.models import apply_attn_impl, build_predictor, get_2d_sincos_pos_embed
from tests.interop.helpers import CodeRunningPickle, reference_models, tiny_encoder, write_truncated

TOL = 1e-5


@pytest.fixture(scope="module")
def fixture_dir(reference_fixture_dir: Path) -> Path:
    path = reference_fixture_dir
    if not (path / "official_tiny.pth.tar").is_file():
        pytest.skip(f"reference fixture checkpoint official_tiny.pth.tar not found in {path}")
    return path


@pytest.fixture(scope="module")
def models(fixture_dir: Path, reference_expected: dict) -> dict:
    """Encoder, predictor and target encoder built from the fixture's numbers, strictly loaded."""
    ckpt = load_reference_checkpoint(fixture_dir / "official_tiny.pth.tar")
    encoder, predictor, target = reference_models(reference_expected["model"])
    built = {"encoder": encoder, "predictor": predictor, "target_encoder": target}
    fresh_tables = {
        "encoder": encoder.pos_embed.detach().clone(),
        "predictor": predictor.predictor_pos_embed.detach().clone(),
    }
    for name, model in built.items():
        model.load_state_dict(getattr(ckpt, name), strict=True)
        model.eval()
    return {**built, "fresh_tables": fresh_tables}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_checkpoint_metadata_and_prefix(fixture_dir: Path, reference_expected: dict) -> None:
    expected = reference_expected
    ckpt = load_reference_checkpoint(fixture_dir / "official_tiny.pth.tar")
    assert ckpt.metadata["epoch"] == 1
    assert ckpt.metadata["batch_size"] == expected["imgs"].shape[0]
    assert ckpt.metadata["loss"] == pytest.approx(expected["train_steps"][-1]["loss"])
    assert len(ckpt.opt["param_groups"]) == 4
    assert not any(k.startswith("module.") for k in ckpt.encoder)


def test_fresh_sincos_tables_equal_stored_reference_tables(models: dict) -> None:
    # The reference never trains its tables, so ours must equal the stored ones exactly.
    enc, pred = models["encoder"], models["predictor"]
    assert torch.equal(models["fresh_tables"]["encoder"], enc.pos_embed)
    assert torch.equal(models["fresh_tables"]["predictor"], pred.predictor_pos_embed)
    assert torch.equal(get_2d_sincos_pos_embed(enc.embed_dim, 12)[None], enc.pos_embed)
    assert not enc.pos_embed.requires_grad and not pred.predictor_pos_embed.requires_grad


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@torch.no_grad()
def test_reproduces_reference_outputs(
    models: dict, reference_expected: dict, attn_impl: str
) -> None:
    expected = reference_expected
    enc, target_enc, pred = models["encoder"], models["target_encoder"], models["predictor"]
    for model in (enc, target_enc, pred):
        apply_attn_impl(model, attn_impl)
    imgs, masks_enc, masks_pred = expected["imgs"], expected["masks_enc"], expected["masks_pred"]

    target_out = target_enc(imgs)
    context_out = enc(imgs, masks_enc)
    predictor_out = pred(context_out, masks_enc, masks_pred)
    targets = make_targets(target_out, masks_pred, num_enc_masks=len(masks_enc))
    got = {
        "encoder_out": enc(imgs),
        "target_encoder_out": target_out,
        "target_encoder_avgpool": target_out.mean(dim=1),
        "context_out": context_out,
        "predictor_out": predictor_out,
        "targets": targets,
        "smooth_l1_loss": jepa_loss(predictor_out, targets, "smooth_l1"),
        "mse_loss": jepa_loss(predictor_out, targets, "l2"),
    }
    diffs = {name: _max_diff(value, expected[name]) for name, value in got.items()}
    assert all(d <= TOL for d in diffs.values()), diffs


def test_loader_refuses_code_executing_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "malicious.pth.tar"
    torch.save({"encoder": CodeRunningPickle(marker), "predictor": {}, "target_encoder": {}}, path)
    with pytest.raises(ReferenceCheckpointError, match="arbitrary unpickling") as info:
        load_reference_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_loader_names_truncated_file(tmp_path: Path) -> None:
    sd = tiny_encoder(patch_size=8, embed_dim=16, depth=1).state_dict()
    whole = tmp_path / "whole.pth.tar"
    torch.save({"encoder": sd, "predictor": {}, "target_encoder": sd}, whole)
    path = write_truncated(whole, tmp_path / "truncated.pth.tar")
    with pytest.raises(ReferenceCheckpointError, match="truncated or corrupt") as info:
        load_reference_checkpoint(path)
    assert str(path) in str(info.value)


def test_loader_names_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pth.tar"):
        load_reference_checkpoint(tmp_path / "absent.pth.tar")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(ReferenceCheckpointError, match=r"foreign\.pt.*missing \['encoder'"):
        load_reference_checkpoint(foreign)
    not_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(ReferenceCheckpointError, match=r"tensor\.pt.*Tensor"):
        load_reference_checkpoint(not_dict)


def test_loader_round_trips_a_reference_layout_file(tmp_path: Path) -> None:
    enc = tiny_encoder(patch_size=8, embed_dim=16, depth=1)
    pred = build_predictor(enc, predictor_embed_dim=8, depth=1, num_heads=2)
    prefixed = {f"module.{k}": v for k, v in enc.state_dict().items()}
    path = tmp_path / "ref.pth.tar"
    torch.save(
        {
            "encoder": prefixed,
            "predictor": {f"module.{k}": v for k, v in pred.state_dict().items()},
            "target_encoder": prefixed,
            "opt": None,
            "scaler": None,
            "epoch": 3,
            "loss": 0.5,
            "batch_size": 2,
            "world_size": 1,
            "lr": 1e-3,
        },
        path,
    )
    ckpt = load_reference_checkpoint(path)
    assert ckpt.metadata == {"epoch": 3, "loss": 0.5, "batch_size": 2, "world_size": 1, "lr": 1e-3}
    assert ckpt.encoder.keys() == enc.state_dict().keys()
    assert all(torch.equal(ckpt.predictor[k], v) for k, v in pred.state_dict().items())
    assert strip_module_prefix({"module.a": 1, "b": 2}) == {"a": 1, "b": 2}

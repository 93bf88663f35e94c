"""Consolidated <-> reference `.pth.tar`: the reference's own file comes back bit for bit, the
reference loader's strict loads succeed, and the fixture gives the reference outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ijepa_ds.backend.param_groups import build_param_groups
from ijepa_ds.interop.consolidated import build_models, load_consolidated, save_consolidated
from ijepa_ds.interop.reference_ckpt import load_reference_checkpoint
from ijepa_ds.interop.reference_export import from_reference, save_reference, to_reference
from ijepa_ds.models import VisionTransformer
from tests.interop.helpers import assert_same, native_consolidated, reference_models

TOL = 1e-5


@pytest.fixture(scope="module")
def fixture_path(reference_fixture_dir):
    return reference_fixture_dir / "official_tiny.pth.tar"


@pytest.fixture(scope="module")
def ours(fixture_path) -> dict:
    return from_reference(fixture_path, num_heads=3)


class DDP(nn.Module):
    """The reference's DistributedDataParallel wrapper as far as state-dict keys go."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def reference_layout(model: dict):
    """Models and AdamW exactly as the reference training script builds them."""
    encoder, predictor, target = reference_models(model)
    opt = torch.optim.AdamW(build_param_groups(encoder, predictor, include_frozen=True))
    return DDP(encoder), DDP(predictor), DDP(target), opt


def test_architecture_is_inferred(ours, reference_expected):
    model = reference_expected["model"]
    enc, pred = ours["encoder_kwargs"], ours["predictor_kwargs"]
    assert (enc["img_size"], enc["patch_size"], enc["embed_dim"], enc["depth"]) == (
        model["img_size"],
        model["patch_size"],
        model["embed_dim"],
        model["depth"],
    )
    assert (pred["predictor_embed_dim"], pred["depth"], pred["num_heads"]) == (
        model["pred_embed_dim"],
        model["pred_depth"],
        model["num_heads"],
    )
    assert ours["step"] == 3 and ours["epoch"] == 1  # 3 AdamW steps in epoch 0
    assert ours["metadata"]["loss"] == pytest.approx(0.4423, abs=1e-4)


def test_fixture_gives_the_reference_outputs(ours, fixture_path, reference_expected):
    exp = reference_expected
    encoder, predictor, target = build_models(ours)
    direct = reference_models(exp["model"])[0]
    direct.load_state_dict(load_reference_checkpoint(fixture_path).encoder)
    with torch.no_grad():
        out = encoder(exp["imgs"])
        assert torch.equal(out, direct.eval()(exp["imgs"]))  # identical to loading it directly
        assert (out - exp["encoder_out"]).abs().max() < TOL
        assert (target(exp["imgs"]).mean(1) - exp["target_encoder_avgpool"]).abs().max() < TOL
        context = encoder(exp["imgs"], exp["masks_enc"])
        pred = predictor(context, exp["masks_enc"], exp["masks_pred"])
        assert (pred - exp["predictor_out"]).abs().max() < TOL


def test_export_reproduces_the_reference_file(ours, fixture_path):
    original = torch.load(fixture_path, weights_only=True)
    exported = to_reference(ours)
    assert set(exported) == set(original)
    for part in ("encoder", "predictor", "target_encoder"):
        assert list(exported[part]) == list(original[part])  # module. prefix, reference order
        assert_same(exported[part], original[part])
    assert exported["opt"]["param_groups"] == original["opt"]["param_groups"]
    assert [len(g["params"]) for g in exported["opt"]["param_groups"]] == [14, 12, 27, 20]
    assert_same(exported["opt"]["state"], original["opt"]["state"])
    for key in ("scaler", "epoch", "loss", "batch_size", "world_size", "lr"):
        assert exported[key] == original[key]


def test_reference_loader_strict_loads(ours, reference_expected, tmp_path):
    path = save_reference(to_reference(ours), tmp_path / "ours.pth.tar")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    encoder, predictor, target, opt = reference_layout(reference_expected["model"])
    encoder.load_state_dict(ckpt["encoder"], strict=True)
    predictor.load_state_dict(ckpt["predictor"], strict=True)
    target.load_state_dict(ckpt["target_encoder"], strict=True)
    opt.load_state_dict(ckpt["opt"])
    # Each AdamW slot holds the moments of the parameter with that name.
    qkv = predictor.module.predictor_blocks[1].attn.qkv.weight
    moments = ours["optimizer"]["state"]["predictor.predictor_blocks.1.attn.qkv.weight"]
    assert torch.equal(opt.state[qkv]["exp_avg_sq"], moments["exp_avg_sq"])
    assert encoder.module.pos_embed not in opt.state  # frozen: in a group, never stepped


def test_ours_to_reference_to_ours_is_lossless(tmp_path):
    native = native_consolidated()
    path = save_reference(to_reference(native), tmp_path / "native.pth.tar")
    back = from_reference(path, num_heads=2)
    for key in (
        "encoder",
        "predictor",
        "target_encoder",
        "optimizer",
        "encoder_kwargs",
        "predictor_kwargs",
        "step",
        "epoch",
    ):
        assert_same(native[key], back[key], key)
    assert back["metadata"]["loss"] == native["metadata"]["loss"]
    assert back["config"] is None  # the reference format has no place for it


def test_fixture_through_a_consolidated_file_and_back(ours, fixture_path, tmp_path):
    path = save_consolidated(ours, tmp_path / "ours.safetensors")
    again = to_reference(load_consolidated(path))
    original = torch.load(fixture_path, weights_only=True)
    assert_same(again["target_encoder"], original["target_encoder"])
    assert_same(again["opt"]["state"], original["opt"]["state"])


def test_without_optimizer_the_groups_still_load(ours, reference_expected):
    exported = to_reference({**ours, "optimizer": None})
    _, _, _, opt = reference_layout(reference_expected["model"])
    opt.load_state_dict(exported["opt"])
    assert exported["opt"]["state"] == {}
    groups = exported["opt"]["param_groups"]
    assert [g.get("WD_exclude", False) for g in groups] == [False, False, True, True]
    assert groups[2]["weight_decay"] == groups[3]["weight_decay"] == 0


def test_head_count_must_be_given_for_unusual_widths(fixture_path):
    with pytest.raises(ValueError, match=r"width 96 .* give num_heads \(--num-heads\)"):
        from_reference(fixture_path)


def test_mismatched_optimizer_is_refused(ours):
    bad = {**ours, "optimizer": {**ours["optimizer"]}}
    groups = [dict(g) for g in bad["optimizer"]["param_groups"]]
    groups[0]["params"] = groups[0]["params"][::-1]
    bad["optimizer"]["param_groups"] = groups
    with pytest.raises(ValueError, match="a different model or order"):
        to_reference(bad)


def test_architecture_inference_edge_cases():
    from ijepa_ds.interop.arch import infer_encoder_kwargs, infer_predictor_kwargs
    from ijepa_ds.models import VisionTransformerPredictor

    with torch.device("meta"):  # shapes only
        giant = VisionTransformer(
            img_size=224, patch_size=14, embed_dim=1408, depth=2, num_heads=16, mlp_ratio=48 / 11
        )
        wide = VisionTransformer(
            img_size=(32, 48), patch_size=8, in_chans=1, embed_dim=64, depth=1, num_heads=4
        )
        pred = VisionTransformerPredictor(
            grid_size=(4, 6), embed_dim=64, predictor_embed_dim=32, depth=3, num_heads=4
        )
    kw = infer_encoder_kwargs(giant.state_dict())
    assert (kw["num_heads"], kw["img_size"], kw["patch_size"], kw["depth"]) == (16, 224, 14, 2)
    assert int(1408 * kw["mlp_ratio"]) == 6144
    with pytest.raises(ValueError, match="not a square grid: give img_size"):
        infer_encoder_kwargs(wide.state_dict(), num_heads=4)
    kw = infer_encoder_kwargs(wide.state_dict(), num_heads=4, img_size=(32, 48))
    assert (kw["img_size"], kw["in_chans"]) == ((32, 48), 1)
    with pytest.raises(ValueError, match="gives a 4x4 grid, but pos_embed holds 24"):
        infer_encoder_kwargs(wide.state_dict(), num_heads=4, img_size=32)
    kw = infer_predictor_kwargs(pred.state_dict(), num_heads=4, grid_size=(4, 6))
    assert (kw["predictor_embed_dim"], kw["depth"], kw["embed_dim"]) == (32, 3, 64)
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        infer_predictor_kwargs(pred.state_dict(), num_heads=5, grid_size=(4, 6))

"""The consolidated single-file format: lossless .pt/.safetensors, atomic, safe and strict."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ijepa_ds.interop.consolidated import (
    ConsolidatedError,
    build_models,
    load_consolidated,
    make_consolidated,
    save_consolidated,
)
from ijepa_ds.models import VisionTransformer, VisionTransformerPredictor
from ijepa_ds.train.param_groups import build_param_groups

ENC_KW = dict(
    img_size=16,
    patch_size=4,
    in_chans=3,
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=4.0,
    qkv_bias=True,
    norm_eps=1e-6,
)
PRED_KW = dict(
    grid_size=(4, 4),
    embed_dim=32,
    predictor_embed_dim=16,
    depth=1,
    num_heads=2,
    mlp_ratio=4.0,
    qkv_bias=True,
    norm_eps=1e-6,
)


def native_consolidated() -> dict:
    """Small models after one real AdamW step in the 4 reference groups, as a consolidated dict."""
    torch.manual_seed(0)
    encoder, predictor = VisionTransformer(**ENC_KW), VisionTransformerPredictor(**PRED_KW)
    target = copy.deepcopy(encoder)
    opt = torch.optim.AdamW(build_param_groups(encoder, predictor), lr=1e-3, weight_decay=0.04)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.randn_like(p)
    opt.step()
    names = {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}
    names.update({id(p): f"predictor.{n}" for n, p in predictor.named_parameters()})
    optimizer = {
        "param_groups": [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [names[id(p)] for p in g["params"]],
            }
            for g in opt.param_groups
        ],
        "state": {names[id(p)]: dict(s) for p, s in opt.state.items()},
    }
    return make_consolidated(
        {k: v.detach() for k, v in encoder.state_dict().items()},
        {k: v.detach() for k, v in predictor.state_dict().items()},
        {k: v.detach() for k, v in target.state_dict().items()},
        ENC_KW,
        PRED_KW,
        config={"model": {"name": "vit_tiny", "crop_scale": [0.3, 1.0]}},
        step=1,
        epoch=0,
        optimizer=optimizer,
        metadata={"loss": 0.5, "world_size": 2},
    )


def assert_same(a, b, path="") -> None:
    """Recursive equality; tensors bit-equal with the same dtype and shape."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def native() -> dict:
    return native_consolidated()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_is_lossless(tmp_path, native, suffix):
    path = save_consolidated(native, tmp_path / f"ckpt{suffix}")
    loaded = load_consolidated(path)
    assert_same(native, loaded)
    # Trainable parameters only: encoder 2 x 12 + 4, predictor 12 + 7 (no position tables).
    assert len(loaded["optimizer"]["state"]) == 28 + 19
    assert [p.name for p in tmp_path.iterdir()] == [f"ckpt{suffix}"]  # no temporary left


def test_shared_and_sliced_tensors_are_saved(tmp_path, native):
    flat = torch.arange(40.0)  # mask_token: a view into a larger buffer, as DeepSpeed gives
    obj = {**native, "target_encoder": native["encoder"]}  # one tensor under two names
    obj["predictor"] = {**native["predictor"], "mask_token": flat[8:24].view(1, 1, 16)}
    loaded = load_consolidated(save_consolidated(obj, tmp_path / "shared.safetensors"))
    assert torch.equal(loaded["predictor"]["mask_token"], flat[8:24].view(1, 1, 16))
    assert_same(loaded["target_encoder"], loaded["encoder"])


def test_pt_file_is_plain_weights_only_torch(tmp_path, native):
    path = save_consolidated(native, tmp_path / "ckpt.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "ijepa_ds.consolidated" and raw["version"] == 1
    assert raw["optimizer"]["param_groups"][2]["params"][0] == "encoder.patch_embed.proj.bias"


def test_safetensors_layout(tmp_path, native):
    from safetensors import safe_open

    path = save_consolidated(native, tmp_path / "ckpt.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "encoder/pos_embed" in keys and "target_encoder/norm.bias" in keys
    assert "predictor/mask_token" in keys
    assert {
        "optimizer/encoder.blocks.0.attn.qkv.weight/" + k for k in ("exp_avg", "exp_avg_sq", "step")
    } <= keys
    assert meta["format"] == "ijepa_ds.consolidated" and '"loss": 0.5' in meta["metadata"]


def test_failed_write_keeps_the_previous_file(tmp_path, native, monkeypatch):
    path = save_consolidated(native, tmp_path / "ckpt.pt")
    before = path.read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_consolidated(native, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


class _Payload:
    """Unpickling this would create a file: the loader must refuse before that happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_unsafe_pickle_is_refused_without_running_it(tmp_path, native):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({**native, "extra": _Payload(marker)}, path)
    assert not marker.exists()  # pickling only records the call
    with pytest.raises(ConsolidatedError, match=r"evil\.pt: refused.*arbitrary unpickling"):
        load_consolidated(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_error_names_the_file(tmp_path, native, suffix):
    path = save_consolidated(native, tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cut\{suffix}: unreadable.*truncated or corrupt"):
        load_consolidated(path)


def test_other_files_are_not_consolidated(tmp_path, native):
    torch.save({"encoder": native["encoder"]}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a consolidated checkpoint"):
        load_consolidated(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"x\.bin: a consolidated checkpoint ends in \.pt or"):
        save_consolidated(native, tmp_path / "x.bin")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_consolidated(tmp_path / "missing.pt")


def test_invalid_objects_are_rejected(native):
    bad = copy.deepcopy(native)
    bad["optimizer"]["state"]["encoder.nothing"] = bad["optimizer"]["state"]["encoder.norm.weight"]
    with pytest.raises(ValueError, match="'encoder.nothing', which no group holds"):
        save_consolidated(bad, "unused.pt")
    with pytest.raises(ValueError, match="'step' is missing or not an integer"):
        save_consolidated({**native, "step": 1.5}, "unused.pt")


def test_build_models_loads_strictly(native):
    encoder, predictor, target = build_models(native)
    assert not encoder.training and not encoder.pos_embed.requires_grad
    assert encoder.blocks[0].attn.qkv.weight.requires_grad
    x = torch.randn(2, 3, 16, 16)
    reference = VisionTransformer(**ENC_KW)
    reference.load_state_dict(native["target_encoder"])
    with torch.no_grad():
        assert torch.equal(target(x), reference.eval()(x))
        masks_x, masks = [torch.arange(10).expand(2, 10)], [torch.arange(10, 14).expand(2, 4)]
        assert predictor(encoder(x, masks_x), masks_x, masks).shape == (2, 4, 32)
    broken = copy.deepcopy(native)
    del broken["predictor"]["mask_token"]
    with pytest.raises(RuntimeError, match="mask_token"):
        build_models(broken)

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
    save_consolidated,
)
from ijepa_ds.models import VisionTransformer
from tests.interop.helpers import (
    ENC_KW,
    CodeRunningPickle,
    assert_same,
    native_consolidated,
    write_truncated,
)


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


def test_unsafe_pickle_is_refused_without_running_it(tmp_path, native):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({**native, "extra": CodeRunningPickle(marker)}, path)
    assert not marker.exists()  # pickling only records the call
    with pytest.raises(ConsolidatedError, match=r"evil\.pt: refused.*arbitrary unpickling"):
        load_consolidated(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_error_names_the_file(tmp_path, native, suffix):
    path = write_truncated(save_consolidated(native, tmp_path / f"cut{suffix}"))
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

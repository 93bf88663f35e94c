"""load_target_encoder: every checkpoint kind gives the same features for the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from ijepa_ds.config import config_from_dict, dump_yaml
from ijepa_ds.eval.features import extract_features
from ijepa_ds.eval.load import SourceError, load_target_encoder, resolve_source
from ijepa_ds.interop.arch import infer_encoder_kwargs
from ijepa_ds.interop.consolidated import make_consolidated, save_consolidated
from ijepa_ds.models import VisionTransformer, build_predictor

# Heads 3 at width 48 are not the "standard" guess for that width (there is none), so the
# reference-format test also checks that --num-heads reaches the encoder.
ARCH = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=48, depth=4, num_heads=3)


def trained_like_encoder(seed: int) -> VisionTransformer:
    """A tiny encoder with weights far from the deterministic init (as after training)."""
    torch.manual_seed(seed)
    enc = VisionTransformer(**ARCH)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn_like(p))
    return enc.eval()


def run_config():
    model = {
        "name": "vit_tiny",
        "patch_size": 4,
        "in_chans": 1,
        "embed_dim": 48,
        "depth": 4,
        "num_heads": 3,
        "pred_depth": 2,
        "pred_emb_dim": 24,
    }
    return config_from_dict({"model": model, "data": {"crop_size": 16, "dataset": "synthetic"}})


def write_run_folder(root, encoders: dict[int, VisionTransformer], latest: int):
    """The trainer's layout, by hand: config.yaml, step folders, COMPLETE, latest."""
    root.mkdir(parents=True)
    dump_yaml(run_config(), root / "config.yaml")
    for step, enc in encoders.items():
        folder = root / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        torch.save({"state_dict": enc.state_dict()}, folder / "target_encoder.pt")
        (folder / "COMPLETE").write_text(json.dumps({"step": step}) + "\n")
    (root / "checkpoints" / "latest").write_text(f"step_{latest:08d}\n")
    return root


def write_reference(path, enc: VisionTransformer):
    """docs/reference.md section 3: DDP-prefixed state dicts plus optimizer and bookkeeping."""
    torch.manual_seed(1)
    predictor = build_predictor(enc, predictor_embed_dim=24, depth=2, num_heads=3)
    prefixed = {f"module.{k}": v for k, v in enc.state_dict().items()}
    opt = torch.optim.AdamW(list(enc.parameters()) + list(predictor.parameters()))
    torch.save(
        {
            "encoder": {f"module.{k}": v.clone() for k, v in enc.state_dict().items()},
            "predictor": {f"module.{k}": v for k, v in predictor.state_dict().items()},
            "target_encoder": prefixed,
            "opt": opt.state_dict(),
            "scaler": None,
            "epoch": 3,
            "loss": 0.25,
            "batch_size": 8,
            "world_size": 1,
            "lr": 1e-3,
        },
        path,
    )
    return path, predictor


def write_consolidated(path, enc: VisionTransformer, predictor):
    pred_kwargs = dict(grid_size=(4, 4), embed_dim=48, predictor_embed_dim=24, depth=2, num_heads=3)
    obj = make_consolidated(
        enc.state_dict(),
        predictor.state_dict(),
        enc.state_dict(),
        {**ARCH, "norm_eps": 1e-6},
        pred_kwargs,
        step=10,
    )
    return save_consolidated(obj, path)


def features(enc: VisionTransformer) -> torch.Tensor:
    imgs = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(imgs, torch.arange(6))
    return extract_features(enc, data, "last4", batch_size=6).features


def test_every_checkpoint_kind_gives_identical_features(tmp_path):
    enc = trained_like_encoder(0)
    expected = features(enc)
    run = write_run_folder(tmp_path / "run", {10: trained_like_encoder(5), 20: enc}, latest=20)
    step = run / "checkpoints" / "step_00000020"
    ref, predictor = write_reference(tmp_path / "ref.pth.tar", enc)
    sources = {
        "run": (run, None),
        "step": (step, None),
        "target file": (step / "target_encoder.pt", None),
        "reference": (ref, 3),
        "consolidated .pt": (write_consolidated(tmp_path / "c.pt", enc, predictor), None),
        "consolidated .safetensors": (
            write_consolidated(tmp_path / "c.safetensors", enc, predictor),
            None,
        ),
    }
    for name, (source, heads) in sources.items():
        loaded, description = load_target_encoder(source, num_heads=heads)
        assert not loaded.training and loaded.num_heads == 3, name
        assert str(source if name != "target file" else step) in description, name
        assert torch.equal(features(loaded), expected), name


def test_run_folder_follows_latest_and_step_folder_without_run_infers_the_architecture(
    tmp_path,
):
    old, new = trained_like_encoder(1), trained_like_encoder(2)
    run = write_run_folder(tmp_path / "run", {10: old, 20: new}, latest=10)
    loaded, description = load_target_encoder(run)
    assert "step_00000010" in description
    assert torch.equal(features(loaded), features(old))
    # A step folder copied out of its run: no config.yaml, so the shapes are read back.
    lone = tmp_path / "lone"
    (run / "checkpoints" / "step_00000020").rename(lone)
    loaded, _ = load_target_encoder(lone, num_heads=3)
    assert infer_encoder_kwargs(new.state_dict(), num_heads=3)["depth"] == 4
    assert torch.equal(features(loaded), features(new))


def test_errors_name_the_path_and_the_accepted_kinds(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*run folder"):
        load_target_encoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty: folder is not a run or step folder.*pth.tar"):
        resolve_source(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="weights.bin: unrecognised.*safetensors"):
        resolve_source(tmp_path / "weights.bin")
    run = write_run_folder(tmp_path / "run", {10: trained_like_encoder(0)}, latest=10)
    (run / "checkpoints" / "latest").unlink()
    with pytest.raises(SourceError, match="run: run folder has no checkpoints/latest"):
        resolve_source(run)
    step = run / "checkpoints" / "step_00000010"
    (step / "COMPLETE").unlink()
    with pytest.raises(SourceError, match="step_00000010: step folder without a COMPLETE"):
        resolve_source(step)


def test_head_count_conflicts_and_unreadable_files_are_errors(tmp_path):
    run = write_run_folder(tmp_path / "run", {10: trained_like_encoder(0)}, latest=10)
    with pytest.raises(SourceError, match="num_heads=4 contradicts the run's config"):
        load_target_encoder(run, num_heads=4)
    bad = tmp_path / "broken.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth.tar"):
        load_target_encoder(bad)


def test_a_run_config_this_version_cannot_read_is_named(tmp_path):
    run = write_run_folder(tmp_path / "run", {10: trained_like_encoder(0)}, latest=10)
    with open(run / "config.yaml", "a") as f:
        f.write("retired_section: 1\n")
    with pytest.raises(SourceError, match=r"config.yaml: the run's config does not load.*retired"):
        load_target_encoder(run)

"""`ijepa-ds convert`: every source kind to every output kind, and errors that say what is wrong."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from ijepa_ds.cli.convert_cmd import configure_convert
from ijepa_ds.interop.consolidated import load_consolidated
from ijepa_ds.interop.reference_ckpt import load_reference_checkpoint
from ijepa_ds.interop.timm_export import build_timm_model, load_timm_export


def convert(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ijepa-ds convert")
    configure_convert(parser)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def fixture_file(reference_fixture_dir):
    return reference_fixture_dir / "official_tiny.pth.tar"


@pytest.fixture(scope="module")
def consolidated_file(fixture_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("convert") / "ours.safetensors"
    assert convert(fixture_file, path, "--num-heads", "3") == 0
    return path


def test_reference_to_consolidated(consolidated_file, fixture_file, capsys):
    ours = load_consolidated(consolidated_file)
    original = load_reference_checkpoint(fixture_file)
    assert torch.equal(
        ours["target_encoder"]["blocks.2.mlp.fc2.weight"],
        original.target_encoder["blocks.2.mlp.fc2.weight"],
    )
    assert ours["encoder_kwargs"]["num_heads"] == 3 and ours["optimizer"] is not None


def test_consolidated_to_reference_and_back(consolidated_file, fixture_file, tmp_path, capsys):
    out = tmp_path / "back.pth.tar"
    assert convert(consolidated_file, out) == 0
    assert f"wrote {out} (reference, step 3, epoch 1" in capsys.readouterr().out
    again, original = load_reference_checkpoint(out), load_reference_checkpoint(fixture_file)
    for key, value in original.predictor.items():
        assert torch.equal(again.predictor[key], value), key
    assert again.metadata == original.metadata
    # A reference file given as .pt is recognised by its content.
    as_pt = tmp_path / "ref.pt"
    as_pt.write_bytes(out.read_bytes())
    assert convert(as_pt, tmp_path / "again.safetensors", "--num-heads", "3") == 0


def test_consolidated_to_timm(consolidated_file, tmp_path):
    out = tmp_path / "encoder.safetensors"
    assert convert(consolidated_file, out, "--to", "timm") == 0
    state, kwargs = load_timm_export(out)
    build_timm_model(kwargs).load_state_dict(state, strict=True)


def test_no_optimizer(consolidated_file, tmp_path):
    out = tmp_path / "slim.pt"
    assert convert(consolidated_file, out, "--no-optimizer") == 0
    assert load_consolidated(out)["optimizer"] is None
    assert out.stat().st_size < consolidated_file.stat().st_size


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_run_and_step_folders(tmp_path, capsys):
    from tests.interop.test_from_deepspeed import write_deepspeed_runs

    run_dir = write_deepspeed_runs(tmp_path / "runs", runs=("1:fp32",), nproc=1)["1:fp32"]
    assert convert(run_dir, tmp_path / "run.pt") == 0
    step_dir = run_dir / "checkpoints" / "step_00000002"
    assert convert(step_dir, tmp_path / "step.pth.tar") == 0
    assert convert(step_dir, tmp_path / "timm.pt", "--to", "timm") == 0
    ours = load_consolidated(tmp_path / "run.pt")
    ref = load_reference_checkpoint(tmp_path / "step.pth.tar")
    expected = torch.load(run_dir / "expected.pt", weights_only=True)
    timm_state, _ = load_timm_export(tmp_path / "timm.pt")
    for key, value in expected["target"].items():
        assert torch.equal(ours["target_encoder"][key], value)
        assert torch.equal(ref.target_encoder[key], value)
        assert torch.equal(timm_state[key], value)
    assert ours["step"] == 2 and ours["config"]["deepspeed"]["config"] == "zero1"
    assert "student weights:" in capsys.readouterr().err  # progress lines


@pytest.mark.parametrize(
    ("make", "argv", "message"),
    [
        (None, ["{tmp}/nothing.pt", "{tmp}/out.pt"], r"nothing\.pt: no such file or folder"),
        ("dir", ["{tmp}/folder", "{tmp}/out.pt"], r"folder: a folder, but not a checkpoint"),
        ("junk", ["{tmp}/junk.pt", "{tmp}/out.pt"], r"junk\.pt: neither a consolidated nor a"),
        ("junk", ["{tmp}/junk.pt", "{tmp}/out.onnx"], r"out\.onnx: cannot tell the output format"),
        (
            "junk",
            ["{tmp}/junk.pt", "{tmp}/out.pth.tar", "--to", "timm"],
            r"out\.pth\.tar: a timm output ends in \.safetensors or \.pt",
        ),
        ("junk", ["{tmp}/junk.bin", "{tmp}/out.pt"], r"junk\.bin: cannot tell what this file is"),
        ("cut", ["{tmp}/cut.safetensors", "{tmp}/out.pt"], r"cut\.safetensors: unreadable"),
    ],
)
def test_errors_name_the_file(tmp_path, capsys, make, argv, message):
    if make == "dir":
        (tmp_path / "folder").mkdir()
    elif make == "junk":
        torch.save({"weights": torch.zeros(2)}, tmp_path / "junk.pt")
        (tmp_path / "junk.bin").write_bytes(b"\0" * 8)
    elif make == "cut":
        (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    assert convert(*[a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ijepa-ds convert: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out.pt").exists()

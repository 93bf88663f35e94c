"""``ijepa-ds eval linear|knn|lowshot|visualize`` end to end on a tiny run folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from ijepa_ds.cli.eval_cmd import configure_eval
from ijepa_ds.cli.main import build_parser
from ijepa_ds.config import ConfigError
from ijepa_ds.eval import FeatureSet, knn_classify
from ijepa_ds.eval import features as features_module
from tests.helpers import REPO, cpu_env, torchrun, write_tiny_eval_run


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the trainer leaves it: config.yaml and one complete checkpoint."""
    return write_tiny_eval_run(tmp_path / "run")


def ijepa_eval(*argv: str) -> int:
    args = build_parser([("eval", "evaluate", configure_eval)]).parse_args(["eval", *argv])
    return args.func(args)


def test_knn_then_linear_reuse_the_cached_features(run_dir, monkeypatch, capsys):
    assert ijepa_eval("knn", str(run_dir), "--k", "3", "5") == 0
    report = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert [r["k"] for r in report["results"]] == [3, 5]
    assert all(0 <= r["top1"] <= 100 and r["num_train"] == 60 for r in report["results"])
    assert report["results"][0]["num_test"] == 15  # synthetic test split: a quarter
    settings = report["settings"]
    assert (settings["dataset"], settings["crop_size"], settings["mean"]) == (
        "synthetic",
        16,
        [0.5],
    )
    assert "step_00000007" in report["source"]
    markdown = (run_dir / "eval" / "knn.md").read_text()
    assert "| pool | top1 | top5 | k | temperature |" in markdown and "synthetic" in markdown
    assert len(list((run_dir / "eval" / "features").glob("features-*.pt"))) == 2

    def no_encoder(*args, **kwargs):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(features_module, "extract_features", no_encoder)
    assert ijepa_eval("linear", str(run_dir)) == 0
    row = json.loads((run_dir / "eval" / "linear.json").read_text())["results"][0]
    assert row["lr"] == 0.1 and row["epochs"] <= 3 and row["num_train"] + row["num_val"] == 60
    assert "test_top1" in capsys.readouterr().out


def test_lowshot_and_pool_flag(run_dir, tmp_path):
    out = tmp_path / "elsewhere"
    code = ijepa_eval(
        "lowshot",
        str(run_dir),
        "--out",
        str(out),
        "--pool",
        "last4",
        "--seeds",
        "0",
        "1",
        "--no-cache",
    )
    assert code == 0
    report = json.loads((out / "lowshot.json").read_text())
    (row,) = report["results"]
    assert (row["fraction"], row["seeds"], row["num_labelled"]) == (0.5, 2, 30)
    assert [r["seed"] for r in report["per_seed"]] == [0, 1]
    assert report["settings"]["pool"] == "last4"
    assert not (out / "features").exists()


def test_a_larger_eval_size_takes_positions_from_the_chosen_mode(run_dir):
    """32 px on a 16 px encoder: an 8x8 grid for a 4x4 table; each mode gives its own
    features (cached apart) and the report records the mode."""
    for mode in ("sincos", "bicubic"):
        argv = ["--crop-size", "32", "--resize-size", "32", "--pos-interp", mode]
        assert ijepa_eval("knn", str(run_dir), *argv) == 0
        settings = json.loads((run_dir / "eval" / "knn.json").read_text())["settings"]
        assert (settings["pos_interp"], settings["crop_size"]) == (mode, 32)
    payloads = [torch.load(f) for f in (run_dir / "eval" / "features").glob("features-*.pt")]
    train = [p["features"] for p in payloads if p["fields"]["split"] == "train"]
    assert len(train) == 2 and train[0].shape == train[1].shape == (60, 32)
    assert not torch.allclose(train[0], train[1])


def test_knn_over_every_token_at_a_larger_eval_size(run_dir):
    """--pool tokens at 32 px: 8x8 tokens of width 32 per image, cached in fp16, scored as the
    eval's kNN scores those rows."""
    argv = ["--pool", "tokens", "--crop-size", "32", "--resize-size", "32", "--k", "3"]
    assert ijepa_eval("knn", str(run_dir), *argv, "--pos-interp", "bicubic") == 0
    report = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert report["settings"]["pool"] == "tokens"
    payloads = {
        p["fields"]["split"]: p
        for p in map(torch.load, (run_dir / "eval" / "features").glob("features-*.pt"))
    }
    train, test = (payloads[split]["features"] for split in ("train", "test"))
    assert train.dtype == test.dtype == torch.float16 and train.shape == (60, 64 * 32)
    sets = [FeatureSet(payloads[s]["features"], payloads[s]["labels"]) for s in ("train", "test")]
    want = knn_classify(*sets, k=3, temperature=report["results"][0]["temperature"])
    assert report["results"][0]["top1"] == pytest.approx(want.top1)
    with pytest.raises(ValueError, match="knn only"):
        ijepa_eval("linear", str(run_dir), "--pool", "tokens")


def test_visualize_writes_the_png(run_dir):
    assert ijepa_eval("visualize", str(run_dir), "--num-images", "3", "--upscale", "2") == 0
    with Image.open(run_dir / "eval" / "pca_test.png") as img:
        # 3 pairs in one row: 6 tiles of 32 px, 2 px padding around each.
        assert img.size == (6 * 32 + 7 * 2, 32 + 2 * 2)


def test_sources_outside_a_run_need_dataset_and_out(run_dir, tmp_path):
    step = run_dir / "checkpoints" / "step_00000007"
    lone = tmp_path / "lone"
    step.rename(lone)
    with pytest.raises(ConfigError, match="--dataset is required"):
        ijepa_eval("knn", str(lone), "--num-heads", "2")
    with pytest.raises(ConfigError, match="--out is required"):
        ijepa_eval("knn", str(lone), "--num-heads", "2", "--dataset", "synthetic")
    with pytest.raises(ConfigError, match="does not exist"):
        ijepa_eval("knn", str(tmp_path / "missing"))
    # Without a run config the crop comes from the encoder (16) and mean/std from the dataset
    # defaults adapted to one channel.
    code = ijepa_eval(
        "knn",
        str(lone),
        "--num-heads",
        "2",
        "--dataset",
        "synthetic",
        "--num-samples",
        "40",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0
    report = json.loads((tmp_path / "o" / "knn.json").read_text())
    assert report["settings"]["crop_size"] == 16 and len(report["settings"]["mean"]) == 1
    assert report["results"][0]["num_train"] == 40


def test_importing_the_command_does_not_import_torch():
    code = "import sys, ijepa_ds.cli.eval_cmd; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=cpu_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


# The 2-rank run's process-group timeout, and how long rank 0's evaluation is made to take.
GROUP_TIMEOUT_S = 9
EVALUATION_S = 2 * GROUP_TIMEOUT_S


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_give_the_single_process_result(run_dir, tmp_path):
    """``torchrun -m ijepa_ds eval knn`` on 2 ranks: sharded extraction, same neighbours.

    Only rank 0 evaluates. Here its evaluation outlasts the group's timeout (as every-token kNN
    at 64 px outlasts the default 10 minutes), and the run must still succeed: no rank may wait
    for rank 0 in a collective meanwhile.
    """
    assert ijepa_eval("knn", str(run_dir), "--out", str(tmp_path / "one")) == 0
    # A separate --out, so a separate feature cache: both runs extract.
    proc = torchrun(
        2,
        __file__,  # this file as the worker: the CLI, with rank 0's evaluation slowed down
        "knn",
        str(run_dir),
        "--out",
        str(tmp_path / "two"),
        env={"IJEPA_DS_DIST_TIMEOUT_MINUTES": str(GROUP_TIMEOUT_S / 60)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "knn.json").read_text()) for d in ("one", "two"))
    assert two["world_size"] == 2 and one["results"] == two["results"]
    assert two["seconds"] > EVALUATION_S > GROUP_TIMEOUT_S


def _slow_evaluation(*args, **kwargs):
    time.sleep(EVALUATION_S)
    return _EVALUATE(*args, **kwargs)


if __name__ == "__main__":  # the worker of the 2-rank test: ``ijepa-ds eval`` as the CLI runs it
    from ijepa_ds.cli.main import main
    from ijepa_ds.eval import run as eval_run

    _EVALUATE = eval_run._evaluate
    eval_run._evaluate = _slow_evaluation
    raise SystemExit(main(["eval", *sys.argv[1:]]))

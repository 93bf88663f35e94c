"""bench.beat_pixels end to end on a tiny synthetic run (16 px, eval size 32, 2 ranks)."""

from __future__ import annotations

import json

import pytest

from bench import common
from bench.beat_pixels import main, measured, report, verdicts
from tests.helpers import write_tiny_eval_run


@pytest.mark.distributed
def test_one_command_reports_both_probes_on_both_splits(tmp_path, capsys):
    out = tmp_path / "bench"
    run = write_tiny_eval_run(out / "pretrained")
    (out / "pretrain.json").write_text(json.dumps({"seconds": 1.0, "command": "train"}))
    report = tmp_path / "beat_pixels.md"
    argv = ["--out", str(out), "--report", str(report), "--skip-pretrain"]
    assert main([*argv, "--eval-size", "32", "--pixel-sizes", "16", "32"]) == 0
    rows = json.loads((out / "beat_pixels.json").read_text())
    assert [(r["features"], r["size"]) for r in rows] == [
        ("I-JEPA target encoder", 32),
        ("raw pixels", 16),
        ("raw pixels", 32),
    ]
    for row in rows:
        values = [row[m] for m in ("linear val", "linear test", "kNN val", "kNN test")]
        assert all(0.0 <= v <= 100.0 for v in values), row
    knn = json.loads((run / "eval32-tokens" / "knn.json").read_text())
    assert rows[0]["kNN test"] == knn["results"][0]["top1"]
    assert (knn["settings"]["crop_size"], knn["settings"]["pos_interp"]) == (32, "bicubic")
    # kNN val read the features eval knn cached: grid2 and tokens, train and test, nothing more.
    assert len(list((run / "eval" / "features").glob("features-*.pt"))) == 4
    text = report.read_text()
    assert "| I-JEPA target encoder | 32x32 |" in text and "Commands run by the benchmark" in text
    assert verdicts(rows)[0] in text


@pytest.mark.fast
def test_verdicts_compare_each_metric_with_the_best_pixel_row():
    def row(features, size, values):
        return dict(zip(("linear val", "linear test", "kNN val", "kNN test"), values),
                    features=features, size=size)  # fmt: skip

    rows = [
        row("enc", 56, (86.0, 85.4, 85.8, 86.1)),
        row("raw pixels", 28, (85.0, 84.4, 85.8, 85.7)),
        row("raw pixels", 56, (85.1, 84.3, 86.0, 85.7)),
    ]
    (line,) = verdicts(rows)
    assert "kNN val: does not beat pixels at 56 (-0.20)" in line
    assert "linear test: beats pixels at 28 (+1.00)" in line
    assert line.endswith("**Does not beat the best pixel row on all four.**")
    rows[0]["kNN val"] = 86.5
    assert verdicts(rows)[0].endswith("**Beats the best pixel row on all four.**")


@pytest.mark.fast
def test_one_probe_reports_and_judges_only_its_own_metrics():
    assert measured(("knn",)) == ("kNN val", "kNN test")
    assert measured(("linear", "knn")) == ("linear val", "linear test", "kNN val", "kNN test")
    metrics = measured(("knn",))
    rows = [
        {"features": "enc", "size": 64, "probe": "-", "kNN val": 86.2, "kNN test": 86.3},
        {"features": "raw pixels", "size": 64, "probe": "-", "kNN val": 86.0, "kNN test": 85.8},
    ]
    (line,) = verdicts(rows, metrics)
    assert "linear" not in line and "kNN val: beats pixels at 64 (+0.20)" in line
    assert line.endswith("**Beats the best pixel row on kNN val and kNN test.**")
    text = report(rows, common.machine_info(), "cmd", 1.0, "extra", metrics)
    assert "| features | eval size | linear probe | kNN val | kNN test |" in text
    assert "| enc | 64x64 | - | 86.20 | 86.30 |" in text

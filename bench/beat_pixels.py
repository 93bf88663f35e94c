"""Does one I-JEPA encoder beat raw pixels on both probes? Fashion-MNIST, in one command.

Run from the repository root (about 95 minutes on 2 cores: 55 of pretraining)::

    python -m bench.beat_pixels --out /tmp/ijepa_beat_pixels

1. Pretrain ``fmnist_tiny`` for ``--epochs`` 6 (``--steps`` 2808) with the real trainer on 2
   ranks (``bench.quality.pretrain``), unless ``--skip-pretrain`` reuses ``<out>/pretrained``.
2. Evaluate its target encoder at eval size ``--eval-size`` 56: every image is resized
   (bilinear) to 56 x 56, and the encoder's position table is resized (bicubic) to the 14 x 14
   patch grid. Linear probe: ``ijepa-ds eval linear RUN --pool grid2`` with the config's sweep.
   kNN: ``ijepa-ds eval knn RUN --pool tokens`` (every last-layer token, fp16). Both on 2 ranks
   under torchrun, with the features cached in ``RUN/eval/features``.
3. The same on a validation split, which takes no part in any choice: the linear probe's own
   validation top-1 (its seeded 10% of train), and kNN with those 6k images as queries and
   the other 54k as memory, from the cached features.
4. Raw normalised pixels at each ``--pixel-sizes`` (28 and 56): the same probe and kNN.
5. ``--with-init`` adds the same encoder at initialisation (``bench.quality.write_init_run``).
6. ``--probes knn`` (or ``linear``) runs one probe only, on every row; the report then has
   that probe's columns and verdicts only.

The report (``--report``) gives every number, which rows beat the best pixel row on each split,
and the commands that produced them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse
import json
import sys
import time
from pathlib import Path

from bench import common
from bench.quality import INIT_NAME, RUN_NAME, eval_cli, pretrain, write_init_run

EVAL_FLAGS = ("--pos-interp", "bicubic")
PROBE_METRICS = {"linear": ("linear val", "linear test"), "knn": ("kNN val", "kNN test")}
PROBES = tuple(PROBE_METRICS)
METRICS = sum(PROBE_METRICS.values(), ())


def measured(probes: tuple[str, ...]) -> tuple[str, ...]:
    """The METRICS that ``probes`` (a subset of PROBES) produce, in METRICS order."""
    return sum((PROBE_METRICS[p] for p in PROBES if p in probes), ())


def sized_flags(size: int) -> list[str]:
    return ["--crop-size", str(size), "--resize-size", str(size), *EVAL_FLAGS]


def knn_val(source: Path, size: int, k: int, temperature: float) -> float:
    """kNN top-1 (%) of the linear probe's validation rows against the rest of train, from the
    every-token features that ``eval knn`` cached for ``source`` at ``size``."""
    from bench.knn_resolution import val_top1
    from ijepa_ds.eval.args import EvalArgs
    from ijepa_ds.eval.load import load_target_encoder, resolve_source, run_config
    from ijepa_ds.eval.run import resolve_settings, split_features

    encoder, _ = load_target_encoder(str(source))
    args = EvalArgs(
        action="knn", source=str(source), crop_size=size, resize_size=size, pool="tokens",
        pos_interp="bicubic", cache_dir=str(source / "eval" / "features"),
    )  # fmt: skip
    settings = resolve_settings(args, encoder, run_config(resolve_source(str(source))), source)
    encoder.pos_interp = settings.pos_interp
    train = split_features(encoder, settings, True, 0)  # a cache hit: eval knn wrote it
    return val_top1(train, k, temperature)


def encoder_row(
    name: str, source: Path, size: int, out: Path, commands: list[str], probes=PROBES
) -> dict:
    """The numbers of one encoder at eval size ``size`` (see the module docstring): the
    ``measured(probes)`` metrics, and the linear probe's chosen lr as ``probe``."""
    folder = f"eval{size}"  # SOURCE/eval56-grid2, SOURCE/eval56-tokens
    row = {"features": name, "size": size, "probe": "-"}
    if "linear" in probes:
        linear, cmd = eval_cli(
            "linear", source, out / f"{source.name}.linear.log", "grid2", sized_flags(size), folder
        )
        commands.append(" ".join(cmd))
        row.update(
            {"probe": f"lr {linear['lr']:g}", "linear val": linear["val_top1"],
             "linear test": linear["test_top1"]}
        )  # fmt: skip
    if "knn" in probes:
        knn, cmd = eval_cli(
            "knn", source, out / f"{source.name}.knn.log", "tokens", sized_flags(size), folder
        )
        commands.append(" ".join(cmd))
        row["kNN val"] = knn_val(source, size, knn["k"], knn["temperature"])
        row["kNN test"] = knn["top1"]
    return row


def pixel_row(source: Path, size: int, eval_cfg, probes=PROBES) -> dict:
    """The ``measured(probes)`` numbers of raw normalised pixels at ``size`` x ``size`` (the
    eval transform of ``source``'s run at that size)."""
    from bench.knn_resolution import pixels, val_and_test
    from ijepa_ds.eval import ProbeConfig, linear_probe

    train, test = pixels(str(source), size)
    row = {"features": "raw pixels", "size": size, "probe": "-"}
    if "linear" in probes:
        probe = ProbeConfig(
            lrs=eval_cfg.linear_lrs, wds=eval_cfg.linear_wds, epochs=eval_cfg.linear_epochs,
            val_every=eval_cfg.val_every_epochs,
        )  # fmt: skip
        linear = linear_probe(train, test, probe)
        row.update(
            {"probe": f"lr {linear.lr:g}", "linear val": linear.val_top1,
             "linear test": linear.test_top1}
        )  # fmt: skip
    if "knn" in probes:
        val, test_top1 = val_and_test([train, test], eval_cfg.knn_k, eval_cfg.knn_temperature)
        row.update({"kNN val": val, "kNN test": test_top1})
    return row


def verdicts(rows: list[dict], metrics: tuple[str, ...] = METRICS) -> list[str]:
    """One line per encoder row: its margin over the best pixel row on each of ``metrics``."""
    pixel_rows = [r for r in rows if r["features"] == "raw pixels"]
    scope = "all four" if metrics == METRICS else " and ".join(metrics)
    lines = []
    for row in (r for r in rows if r["features"] != "raw pixels"):
        margins, passed = [], True
        for metric in metrics:
            best = max(pixel_rows, key=lambda r: r[metric])
            delta = row[metric] - best[metric]
            word = "beats" if delta > 0 else "does not beat"
            margins.append(f"{metric}: {word} pixels at {best['size']} ({delta:+.2f})")
            passed = passed and delta > 0
        lines.append(
            f"- {row['features']}: {'; '.join(margins)}. "
            f"**{'Beats' if passed else 'Does not beat'} the best pixel row on {scope}.**"
        )
    return lines


def report(
    rows: list[dict], start: dict, command: str, seconds: float, extra: str, metrics=METRICS
) -> str:
    lines = [
        "| features | eval size | linear probe | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for row in rows:
        cells = [row["features"], f"{row['size']}x{row['size']}", row["probe"]]
        cells += [f"{row[m]:.2f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    header = common.report_header("Beating raw pixels on both probes", start, command, seconds)
    lines += ["", *verdicts(rows, metrics)]
    return header + extra + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2808, help="pretraining optimizer steps")
    parser.add_argument("--epochs", type=int, default=6, help="schedule length (epochs)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ijepa_beat_pixels"))
    parser.add_argument("--report", default="bench/results/beat_pixels.md")
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse <out>/pretrained")
    parser.add_argument("--with-init", action="store_true", help="also the encoder at init")
    parser.add_argument("--eval-size", type=int, default=56)
    parser.add_argument("--pixel-sizes", type=int, nargs="+", default=[28, 56])
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--probes", nargs="+", choices=PROBES, default=list(PROBES),
        help="which probes to run on every row (default both)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    probes = tuple(p for p in PROBES if p in args.probes)
    import torch

    from ijepa_ds.config import load_config

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start, t0 = common.machine_info(), time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / "pretrain.json"
    run_dir = args.out / RUN_NAME
    if not args.skip_pretrain:
        run_dir, seconds, cmd = pretrain(args.out, args.steps, args.epochs, args.set)
        record.write_text(json.dumps({"seconds": seconds, "command": " ".join(cmd)}) + "\n")
    pretrained = json.loads(record.read_text())
    commands = [pretrained["command"]]
    cfg = load_config(str(run_dir / "config.yaml"))
    rows = [
        encoder_row("I-JEPA target encoder", run_dir, args.eval_size, args.out, commands, probes)
    ]
    if args.with_init:
        init_dir = write_init_run(run_dir, args.out / INIT_NAME)
        rows.append(
            encoder_row(
                "same encoder at init", init_dir, args.eval_size, args.out, commands, probes
            )
        )
    rows += [pixel_row(run_dir, size, cfg.eval, probes) for size in args.pixel_sizes]
    reused = " (reused with --skip-pretrain)" if args.skip_pretrain else ""
    extra = (
        f"Pretraining{reused}: `{pretrained['command']}`, {pretrained['seconds'] / 60:.1f} min "
        f"of wall time, {cfg.schedule.max_steps} steps. Eval size {args.eval_size}: images "
        f"resized (bilinear), positions resized (bicubic). Probes run: {' and '.join(probes)}. "
        "Linear probe: `grid2` features, the "
        f"config's sweep (lr {list(cfg.eval.linear_lrs)} x wd {list(cfg.eval.linear_wds)}, "
        f"{cfg.eval.linear_epochs} epochs), chosen on its seeded 10% validation split of train "
        "(`linear val` is that split's top-1), test top-1 on the 10k test images. kNN: "
        f"`tokens` features for the encoders, k {cfg.eval.knn_k}, T {cfg.eval.knn_temperature}, "
        "cosine; `kNN val` has the same 6k validation images as queries and the other 54k as "
        "memory, `kNN test` the 10k test images against all 60k. The validation columns take "
        "no part in any choice made here.\n\nCommands run by the benchmark:\n\n"
        + "\n".join(f"    {c}" for c in commands)
    )
    command = "python -m bench.beat_pixels " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, start, command, time.perf_counter() - t0, extra, measured(probes))
    common.write_result(args.report, text)
    (args.out / "beat_pixels.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

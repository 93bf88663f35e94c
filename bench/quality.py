"""Quality benchmark: does I-JEPA pretraining on Fashion-MNIST beat a random encoder?

Run from the repository root (about an hour on a 2-core CPU: 41 minutes of pretraining)::

    python -m bench.quality --steps 1872 --epochs 4 --out /tmp/ijepa_quality

1. Pretrain ``fmnist_tiny`` with the real trainer (``torchrun --standalone --nproc_per_node 2
   -m ijepa_ds train``) for ``--steps`` optimizer steps, saving the target encoder at the end.
2. Build the same target encoder at initialisation (same seed, no step: the trainer seeds
   torch with ``cfg.seed`` and builds the encoder first) and store it as a run folder too.
3. ``ijepa-ds eval linear`` (the config's sweep and a wider, longer one) and ``eval knn`` on
   both (Fashion-MNIST train / test, features extracted once by 2 ranks under torchrun and
   cached), plus the same probes and kNN on raw normalised pixels.
4. Write the table, budget, machine and commands to ``--report`` (markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ijepa_ds.eval.features import POOLS, pool_width

REPO = Path(__file__).resolve().parent.parent
RUN_NAME = "pretrained"
INIT_NAME = "init"


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    return env


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]


def run_logged(cmd: list[str], log: Path) -> float:
    """Run cmd from the repo root, output to log; returns wall seconds; raises on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=bench_env(), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def pretrain(
    out: Path, steps: int, epochs: int, extra: list[str] = ()
) -> tuple[Path, float, list[str]]:
    """``extra``: further KEY=VALUE overrides of ``fmnist_tiny`` (applied last)."""
    overrides = [
        f"logging.output_dir={out}",
        f"logging.run_name={RUN_NAME}",
        f"schedule.epochs={epochs}",
        f"schedule.max_steps={steps}",
        "checkpoint.every_steps=0",
        "checkpoint.save_at_end=true",
        "logging.tensorboard=false",
        "logging.image_every=0",
        "logging.log_every=20",
        *extra,
    ]
    cmd = torchrun("-m", "ijepa_ds", "train", "--config", "fmnist_tiny", *overrides)
    seconds = run_logged(cmd, out / "pretrain.log")
    return out / RUN_NAME, seconds, cmd


def write_init_run(run_dir: Path, init_dir: Path) -> Path:
    """A run folder holding the target encoder at step 0 (the trainer's layout, by hand)."""
    import torch

    from ijepa_ds.config import load_config
    from ijepa_ds.models.from_config import build_encoder_from_config

    cfg = load_config(str(run_dir / "config.yaml"))
    torch.manual_seed(cfg.seed)  # as train.trainer.build_student, before the encoder
    encoder = build_encoder_from_config(cfg)
    step = init_dir / "checkpoints" / "step_00000000"
    step.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "config.yaml", init_dir / "config.yaml")
    torch.save({"state_dict": encoder.state_dict()}, step / "target_encoder.pt")
    (step / "COMPLETE").write_text(json.dumps({"step": 0}) + "\n")
    (init_dir / "checkpoints" / "latest").write_text("step_00000000\n")
    return init_dir


@dataclass(frozen=True)
class Sweep:
    """A linear-probe sweep beyond the config's (wd 0, validated every 5 epochs)."""

    key: str  # row field and log name
    name: str
    lrs: tuple[float, ...]
    epochs: int
    why: str

    def cli_args(self) -> list[str]:
        lrs = [f"{lr:g}" for lr in self.lrs]
        return ["--lrs", *lrs, "--wds", "0", "--epochs", str(self.epochs), "--val-every", "5"]

    def describe(self) -> str:
        return f"lr in {{{', '.join(f'{lr:g}' for lr in self.lrs)}}}, wd 0, {self.epochs} epochs"


# The config's sweep picks its largest lr at its last epoch, so two wider, longer ones: the
# extended sweep (as in earlier runs of this benchmark) and a wide one whose grid brackets the
# chosen lr on both sides.
SWEEPS = (
    Sweep(
        "linear_ext",
        "extended sweep",
        (0.1, 0.3, 1.0),
        30,
        "the config's sweep chose its largest lr at its last epoch",
    ),
    Sweep(
        "linear_wide",
        "wide sweep",
        (0.3, 1.0, 3.0, 10.0),
        60,
        "a grid meant to bracket the chosen lr on both sides",
    ),
)
PROBE_NAMES = {"linear": "config sweep", **{sweep.key: sweep.name for sweep in SWEEPS}}
PROBE_KEYS = tuple(PROBE_NAMES)


def eval_cli(
    action: str, source: Path, log: Path, pool: str, extra: list[str] = (), out: str = "eval"
):
    """``ijepa-ds eval ACTION SOURCE --pool POOL --out SOURCE/out-POOL`` on 2 ranks, features
    cached in ``SOURCE/eval/features`` (keyed by pool); returns (the report's first result row,
    command)."""
    flags = ["--pool", pool, "--out", str(source / f"{out}-{pool}")]
    flags += ["--cache-dir", str(source / "eval" / "features")]
    cmd = torchrun(
        str(Path(__file__).resolve()), "--as-cli", "eval", action, str(source), *flags, *extra
    )
    run_logged(cmd, log)
    report = json.loads((source / f"{out}-{pool}" / f"{action}.json").read_text())
    return report["results"][0], cmd


def raw_pixel_row(eval_cfg, sweeps: tuple[Sweep, ...] = SWEEPS) -> dict:
    """The config's probe sweep, ``sweeps`` and kNN on flattened normalised pixels [N, 784]."""
    import torch
    from torch.utils.data import DataLoader

    from ijepa_ds.data import (
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        FashionMNIST,
        build_eval_transform,
        default_root,
    )
    from ijepa_ds.eval import FeatureSet, ProbeConfig, knn_classify, linear_probe

    transform = build_eval_transform(28, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    sets = []
    for train in (True, False):
        data = FashionMNIST(default_root("fashion_mnist"), train=train, transform=transform)
        xs, ys = zip(*DataLoader(data, batch_size=2048))
        sets.append(FeatureSet(torch.cat(xs).flatten(1), torch.cat(ys)))
    probe = ProbeConfig(
        lrs=eval_cfg.linear_lrs,
        wds=eval_cfg.linear_wds,
        epochs=eval_cfg.linear_epochs,
        val_every=eval_cfg.val_every_epochs,
    )
    row = {"features": "raw pixels (784)", "kind": "pixels", "pool": "-"}
    row["linear"] = linear_probe(*sets, probe).to_dict()
    for sweep in sweeps:
        config = ProbeConfig(lrs=sweep.lrs, wds=(0.0,), epochs=sweep.epochs, val_every=5)
        row[sweep.key] = linear_probe(*sets, config).to_dict()
    row["knn"] = knn_classify(*sets, eval_cfg.knn_k, eval_cfg.knn_temperature).to_dict()
    return row


def machine() -> str:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    import torch

    return (
        f"{model}, {os.cpu_count()} cores (shared VM), Python {platform.python_version()}, "
        f"torch {torch.__version__}, OMP_NUM_THREADS=1"
    )


def write_report(path: Path, rows: list[dict], budget: dict, commands: list[str]) -> None:
    lines = [
        "# Quality: linear probe and kNN on Fashion-MNIST after a CPU pretraining budget",
        "",
        f"Command (repository root): `{budget['command']}`",
        "",
        f"Machine: {budget['machine']}; 1-minute load average {budget['load_before']} before, "
        f"{budget['load_after']} after.",
        "",
        f"Budget: `fmnist_tiny` (ViT-Tiny width 192, depth 6, patch 4 on 28x28, predictor depth "
        f"3), 2 ranks (torchrun, gloo, ZeRO-1, fp32), global batch 128, {budget['steps']} "
        f"optimizer steps = {budget['steps'] * 128 / 60000:.2f} epochs, schedule over "
        f"{budget['epochs']} epoch(s); pretraining wall time {budget['pretrain_s']:.0f} s "
        f"({budget['pretrain_note']}), final loss {budget['final_loss']}.",
        "",
        "Evaluation: target encoder; features: `avg` = average pool of the last layer (192-d), "
        "`grid2` = the last layer averaged over each quarter of the 7x7 patch grid (adaptive "
        "2x2 pool, 4 x 192 = 768-d, about as wide as the 784 raw pixels), `last4` = the last 4 "
        "layers' averages (768-d); eval transform = "
        "the whole 28x28 image, normalised. Linear probe: BatchNorm (no affine) + linear head, "
        "SGD momentum 0.9, batch 256, cosine lr, 10 epochs, lr x wd sweep "
        f"{budget['lrs']} x {budget['wds']} chosen on a 10% validation split of train, retrained "
        f"on all 60k, top-1 on the 10k test images. kNN: k={budget['k']}, T={budget['T']}, "
        "cosine, train set as memory.",
        "",
        *(
            f"{sweep.name.capitalize()}: the same probe with {sweep.describe()}, "
            f"validated every 5 ({sweep.why})."
            for sweep in SWEEPS
        ),
        "",
        "| features | "
        + " | ".join(f"linear top-1, {PROBE_NAMES[k]} (%) | lr / wd / epochs" for k in PROBE_KEYS)
        + " | kNN top-1 (%) |",
        "|---|" + "---|---|" * len(PROBE_KEYS) + "---|",
    ]
    for row in rows:
        cells = [row["features"]]
        for lin in (row[key] for key in PROBE_KEYS):
            cells += [f"{lin['test_top1']:.2f}", f"{lin['lr']:g} / {lin['wd']:g} / {lin['epochs']}"]
        cells.append(f"{row['knn']['top1']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    pixels = rows[-1]
    for row in (r for r in rows if r["kind"] == "pretrained"):
        init = next(r for r in rows if r["kind"] == "init" and r["pool"] == row["pool"])
        for key, name in (*PROBE_NAMES.items(), ("knn", "kNN")):
            mine, at_init, raw = (top1(r, key) for r in (row, init, pixels))
            lines.append(
                f"`{row['pool']}`, {name}: pretrained {mine:.2f}, {mine - at_init:+.2f} vs init, "
                f"{mine - raw:+.2f} vs raw pixels.  "
            )
    lines += [
        "",
        "Commands run by the benchmark:",
        "",
    ]
    lines += [f"    {c}" for c in commands]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def top1(row: dict, key: str) -> float:
    """Test top-1 (%) of one probe ("linear", a sweep key or "knn") in a result row."""
    return row[key]["top1"] if key == "knn" else row[key]["test_top1"]


def final_loss(run_dir: Path) -> str:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    losses = [r["loss"] for r in rows if "loss" in r]
    return f"{losses[-1]:.4f}" if losses else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1872, help="pretraining optimizer steps")
    parser.add_argument("--epochs", type=int, default=4, help="schedule length (epochs)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ijepa_quality"))
    parser.add_argument("--report", type=Path, default=REPO / "bench/results/quality.md")
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse <out>/pretrained")
    parser.add_argument(
        "--pools",
        nargs="+",
        default=["avg", "grid2"],
        choices=POOLS,
        help="feature pools evaluated for both encoders",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="further fmnist_tiny overrides for pretraining (e.g. mask.context_policy=keep_all)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from ijepa_ds.config import load_config
    from ijepa_ds.models.from_config import build_encoder_from_config

    load_before = os.getloadavg()[0]
    run_dir, record = args.out / RUN_NAME, args.out / "pretrain.json"
    if not args.skip_pretrain:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir, seconds, cmd = pretrain(args.out, args.steps, args.epochs, args.set)
        record.write_text(json.dumps({"seconds": seconds, "command": " ".join(cmd)}) + "\n")
    pretrained = json.loads(record.read_text())  # --skip-pretrain: what the pretraining recorded
    init_dir = write_init_run(run_dir, args.out / INIT_NAME)
    cfg = load_config(str(run_dir / "config.yaml"))
    encoder = build_encoder_from_config(cfg)
    rows, commands = [], [pretrained["command"]]
    encoders = (
        ("pretrained", "I-JEPA target encoder", run_dir),
        ("init", "same encoder at init", init_dir),
    )
    for pool in args.pools:
        for kind, label, source in encoders:
            width = pool_width(pool, encoder.embed_dim)
            row = {"features": f"{label} ({pool}, {width})", "kind": kind, "pool": pool}
            log = args.out / f"{source.name}.{pool}"
            row["linear"], cmd = eval_cli("linear", source, log.with_suffix(".linear.log"), pool)
            commands.append(" ".join(cmd))
            for sweep in SWEEPS:
                folder = sweep.key.replace("linear", "eval")  # eval_ext, eval_wide
                row[sweep.key], cmd = eval_cli(
                    "linear",
                    source,
                    log.with_suffix(f".{sweep.key}.log"),
                    pool,
                    sweep.cli_args(),
                    folder,
                )
                commands.append(" ".join(cmd))
            row["knn"], cmd = eval_cli("knn", source, log.with_suffix(".knn.log"), pool)
            commands.append(" ".join(cmd))
            rows.append(row)
    rows.append(raw_pixel_row(cfg.eval))
    budget = {
        "command": "python -m bench.quality " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "load_before": f"{load_before:.2f}",
        "load_after": f"{os.getloadavg()[0]:.2f}",
        "steps": cfg.schedule.max_steps,
        "epochs": cfg.schedule.epochs,
        "pretrain_s": pretrained["seconds"],
        "pretrain_note": pretrained.get("note", "process start to exit"),
        "final_loss": final_loss(run_dir),
        "lrs": list(cfg.eval.linear_lrs),
        "wds": list(cfg.eval.linear_wds),
        "k": cfg.eval.knn_k,
        "T": cfg.eval.knn_temperature,
    }
    write_report(args.report, rows, budget, commands)
    (args.out / "quality.json").write_text(json.dumps({"rows": rows, "budget": budget}, indent=2))
    print(args.report.read_text())
    return 0


def as_cli(argv: list[str]) -> int:
    """``ijepa-ds`` with the eval command available (whether or not main registers it yet)."""
    from ijepa_ds.cli.eval_cmd import configure_eval
    from ijepa_ds.cli.main import COMMANDS, build_parser

    commands = list(COMMANDS)
    if "eval" not in [name for name, _, _ in commands]:
        commands.append(("eval", "evaluate a target encoder", configure_eval))
    args = build_parser(commands).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-cli"]:
        raise SystemExit(as_cli(sys.argv[2:]))
    raise SystemExit(main())

"""Quality benchmark: does I-JEPA pretraining on Fashion-MNIST beat a random encoder?

Run from the repository root (about 25 minutes on a 2-core CPU)::

    python -m bench.quality --steps 420 --epochs 1 --out /tmp/ijepa_quality

1. Pretrain ``fmnist_tiny`` with the real trainer (``torchrun --standalone --nproc_per_node 2
   -m ijepa_ds train``) for ``--steps`` optimizer steps, saving the target encoder at the end.
2. Build the same target encoder at initialisation (same seed, no step: the trainer seeds
   torch with ``cfg.seed`` and builds the encoder first) and store it as a run folder too.
3. ``ijepa-ds eval linear`` and ``eval knn`` on both (Fashion-MNIST train / test, features
   extracted by 2 ranks under torchrun), plus a linear probe and kNN on raw normalised pixels.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_NAME = "pretrained"
INIT_NAME = "init"


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *args]


def run_logged(cmd: list[str], log: Path) -> float:
    """Run cmd from the repo root, output to log; returns wall seconds; raises on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=bench_env(), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def pretrain(out: Path, steps: int, epochs: int) -> tuple[Path, float, list[str]]:
    overrides = [
        f"logging.output_dir={out}", f"logging.run_name={RUN_NAME}",
        f"schedule.epochs={epochs}", f"schedule.max_steps={steps}",
        "checkpoint.every_steps=0", "checkpoint.save_at_end=true",
        "logging.tensorboard=false", "logging.image_every=0", "logging.log_every=20",
    ]
    cmd = torchrun("-m", "ijepa_ds", "train", "--config", "fmnist_tiny", *overrides)
    seconds = run_logged(cmd, out / "pretrain.log")
    return out / RUN_NAME, seconds, cmd


def write_init_run(run_dir: Path, init_dir: Path) -> Path:
    """A run folder holding the target encoder at step 0 (the trainer's layout, by hand)."""
    import torch

    from ijepa_ds.config import load_config
    from ijepa_ds.train.student import build_encoder_from_config

    cfg = load_config(str(run_dir / "config.yaml"))
    torch.manual_seed(cfg.seed)  # as train.trainer.build_student, before the encoder
    encoder = build_encoder_from_config(cfg.model, cfg.data.crop_size)
    step = init_dir / "checkpoints" / "step_00000000"
    step.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "config.yaml", init_dir / "config.yaml")
    torch.save({"state_dict": encoder.state_dict()}, step / "target_encoder.pt")
    (step / "COMPLETE").write_text(json.dumps({"step": 0}) + "\n")
    (init_dir / "checkpoints" / "latest").write_text("step_00000000\n")
    return init_dir


def eval_cli(action: str, source: Path, log: Path, extra: list[str]) -> tuple[dict, float, list]:
    """``ijepa-ds eval ACTION SOURCE`` on 2 ranks; returns (report JSON, seconds, command)."""
    cmd = torchrun(str(Path(__file__).resolve()), "--as-cli", "eval", action, str(source), *extra)
    seconds = run_logged(cmd, log)
    return json.loads((source / "eval" / f"{action}.json").read_text()), seconds, cmd


def raw_pixel_rows(eval_cfg) -> list[dict]:
    """Linear probe and kNN on flattened normalised pixels [N, 784], same settings."""
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
    probe = ProbeConfig(lrs=eval_cfg.linear_lrs, wds=eval_cfg.linear_wds,
                        epochs=eval_cfg.linear_epochs, val_every=eval_cfg.val_every_epochs)
    start = time.perf_counter()
    lin = linear_probe(sets[0], sets[1], probe)
    knn = knn_classify(sets[0], sets[1], eval_cfg.knn_k, eval_cfg.knn_temperature)
    seconds = time.perf_counter() - start
    return [{"features": "raw pixels (784)", "linear": lin.to_dict(), "knn": knn.to_dict(),
             "seconds": seconds}]


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), platform.processor())
    import torch

    return (f"{model}, {os.cpu_count()} cores (shared VM), Python {platform.python_version()}, "
            f"torch {torch.__version__}, OMP_NUM_THREADS=1")


def write_report(path: Path, rows: list[dict], budget: dict, commands: list[str]) -> None:
    lines = [
        "# Quality: linear probe and kNN on Fashion-MNIST after a CPU pretraining budget", "",
        f"Command (repository root): `{budget['command']}`", "",
        f"Machine: {budget['machine']}; 1-minute load average {budget['load_before']} before, "
        f"{budget['load_after']} after.", "",
        f"Budget: `fmnist_tiny` (ViT-Tiny width 192, depth 6, patch 4 on 28x28, predictor depth "
        f"3), 2 ranks (torchrun, gloo, ZeRO-1, fp32), global batch 128, {budget['steps']} "
        f"optimizer steps = {budget['steps'] * 128 / 60000:.2f} epochs, schedule over "
        f"{budget['epochs']} epoch(s); pretraining wall time {budget['pretrain_s']:.0f} s "
        f"(process start to exit), final loss {budget['final_loss']}.", "",
        "Evaluation: target encoder, average pool of the last layer (192-d); eval transform = "
        "the whole 28x28 image, normalised. Linear probe: BatchNorm (no affine) + linear head, "
        "SGD momentum 0.9, batch 256, cosine lr, 10 epochs, lr x wd sweep "
        f"{budget['lrs']} x {budget['wds']} chosen on a 10% validation split of train, retrained "
        f"on all 60k, top-1 on the 10k test images. kNN: k={budget['k']}, T={budget['T']}, "
        "cosine, train set as memory.", "",
        "| features | linear top-1 (%) | chosen lr / wd / epochs | kNN top-1 (%) | eval time (s) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lin, knn = row["linear"], row["knn"]
        lines.append(
            f"| {row['features']} | {lin['test_top1']:.2f} | {lin['lr']:g} / {lin['wd']:g} / "
            f"{lin['epochs']} | {knn['top1']:.2f} | {row['seconds']:.0f} |"
        )
    gain = rows[0]["linear"]["test_top1"] - rows[1]["linear"]["test_top1"]
    lines += ["", f"Pretrained minus initialisation, linear probe: {gain:+.2f} points "
              f"(goal: >= +5).", "", "Commands run by the benchmark:", ""]
    lines += [f"    {c}" for c in commands]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def final_loss(run_dir: Path) -> str:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    losses = [r["loss"] for r in rows if "loss" in r]
    return f"{losses[-1]:.4f}" if losses else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=420, help="pretraining optimizer steps")
    parser.add_argument("--epochs", type=int, default=1, help="schedule length (epochs)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ijepa_quality"))
    parser.add_argument("--report", type=Path, default=REPO / "bench/results/quality.md")
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse <out>/pretrained")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from ijepa_ds.config import load_config

    load_before = os.getloadavg()[0]
    run_dir, pretrain_s, train_cmd = args.out / RUN_NAME, float("nan"), ["(reused)"]
    if not args.skip_pretrain:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir, pretrain_s, train_cmd = pretrain(args.out, args.steps, args.epochs)
    init_dir = write_init_run(run_dir, args.out / INIT_NAME)
    cfg = load_config(str(run_dir / "config.yaml"))
    rows, commands = [], [" ".join(train_cmd)]
    for label, source in (("I-JEPA target encoder", run_dir), ("same encoder at init", init_dir)):
        lin, lin_s, cmd = eval_cli("linear", source, args.out / f"{source.name}_linear.log", [])
        knn, knn_s, cmd2 = eval_cli("knn", source, args.out / f"{source.name}_knn.log", [])
        commands += [" ".join(cmd), " ".join(cmd2)]
        rows.append({"features": f"{label} (avg pool, 192)", "linear": lin["results"][0],
                     "knn": knn["results"][0], "seconds": lin_s + knn_s})
    rows += raw_pixel_rows(cfg.eval)
    budget = {
        "command": "python -m bench.quality " + " ".join(argv or sys.argv[1:]),
        "machine": machine(), "load_before": f"{load_before:.2f}",
        "load_after": f"{os.getloadavg()[0]:.2f}", "steps": cfg.schedule.max_steps,
        "epochs": cfg.schedule.epochs, "pretrain_s": pretrain_s, "final_loss": final_loss(run_dir),
        "lrs": list(cfg.eval.linear_lrs), "wds": list(cfg.eval.linear_wds),
        "k": cfg.eval.knn_k, "T": cfg.eval.knn_temperature,
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

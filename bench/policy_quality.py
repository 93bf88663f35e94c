"""Fashion-MNIST quality per mask.context_policy under one CPU budget.

Run from the repository root (writes ``bench/results/context_policy_quality.md``; about 45
minutes on 2 cores at the default budget of one epoch per policy)::

    python -m bench.policy_quality --steps 468 --epochs 1 --out /tmp/ijepa_policy_quality

For each policy (``global_min``; ``group_min`` with groups of 64, one rank's micro-batch, as the
reference cuts per GPU batch: the default group of 128 is the whole global batch here and would
repeat ``global_min``; ``keep_all``) it pretrains ``fmnist_tiny`` with the real trainer on 2 ranks
for the same number of steps (``bench.quality.pretrain``), then runs ``ijepa-ds eval linear``
(the config's sweep) and ``eval knn`` on the target encoder with the ``avg`` and ``grid2`` pools.
The encoder at initialisation (the same for every policy: same seed) and raw pixels are
evaluated the same way once. The masks each policy trained on are summarised from the sampler
(``ijepa_ds.perf.mask_stats``, what ``ijepa-ds masks stats`` prints) over the run's steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench import quality

POLICIES = {
    "global_min": ["mask.context_policy=global_min"],
    "group_min": ["mask.context_policy=group_min", "mask.group_size=64"],
    "keep_all": ["mask.context_policy=keep_all"],
}
POOLS = ("avg", "grid2")
STATS_EVERY = 4  # masks stats on every 4th step of the run (the sampler is cheap but not free)


def policy_mask_stats(overrides: list[str], steps: int) -> dict[str, float]:
    """Mean drawn / kept context patches per sample, kept fraction and padding over the run."""
    from ijepa_ds.config import load_config
    from ijepa_ds.perf.mask_stats import mask_stats

    cfg = load_config("fmnist_tiny", overrides)
    rows = [mask_stats(cfg, 2, step) for step in range(0, steps, STATS_EVERY)]
    keys = (
        "context_drawn_mean",
        "context_kept_mean",
        "context_kept_fraction",
        "padding_fraction",
        "computed_padding_fraction",
    )
    out = {k: sum(getattr(r, k) for r in rows) / len(rows) for k in keys}
    out["context_kept_min"] = min(r.context_kept_mean for r in rows)
    return out


def evaluate(source: Path, out: Path, name: str) -> dict[str, dict]:
    """pool -> {"linear": config-sweep result, "knn": result} for one run folder."""
    results = {}
    for pool in POOLS:
        linear, _ = quality.eval_cli("linear", source, out / f"{name}.{pool}.linear.log", pool)
        knn, _ = quality.eval_cli("knn", source, out / f"{name}.{pool}.knn.log", pool)
        results[pool] = {"linear": linear, "knn": knn}
    return results


def pixel_results(cfg_eval) -> dict[str, dict]:
    row = quality.raw_pixel_row(cfg_eval, sweeps=())
    return {"-": {"linear": row["linear"], "knn": row["knn"]}}


def cells(res: dict) -> str:
    """'linear | kNN' per pool of one evaluate() result, as table cells."""
    return " | ".join(
        f"{res[p]['linear']['test_top1']:.2f} | {res[p]['knn']['top1']:.2f}" for p in POOLS
    )


def write_report(path: Path, record: dict, command: str) -> None:
    init, pixels = record["init"], record["pixels"]["-"]
    lines = [
        "# Fashion-MNIST quality per mask.context_policy, one CPU budget",
        "",
        f"Command (repository root): `{command}`",
        "",
        f"Machine: {record['machine']}; 1-minute load average {record['load_before']:.2f} "
        f"before, {record['load_after']:.2f} after.",
        "",
        f"Budget: `fmnist_tiny` (ViT-Tiny width 192, depth 6, patch 4 on 28x28, predictor depth "
        f"3), 2 ranks (torchrun, gloo, ZeRO-1, fp32), global batch 128, {record['steps']} "
        f"optimizer steps per policy (schedule over {record['epochs']} epoch(s)), the same seed "
        "and data order; only `mask.context_policy` (and `mask.group_size`) differ.",
        "",
        "Evaluation as in `bench/results/quality.md` (config sweep linear probe, kNN k 20), on "
        "the target encoder; `avg` = patch average of the last layer (192-d), `grid2` = the last "
        "layer averaged over each quarter of the 7x7 grid (768-d).",
        "",
        "| policy | context drawn / kept per sample (mean) | kept / drawn | fewest kept (step "
        "mean) | padding: collated / computed | pretrain s | final loss | linear avg (%) "
        "| kNN avg (%) | linear grid2 (%) | kNN grid2 (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    for policy, row in record["policies"].items():
        st = row["masks"]
        lines.append(
            f"| {policy} | {st['context_drawn_mean']:.1f} / {st['context_kept_mean']:.1f} "
            f"| {st['context_kept_fraction']:.3f} | {st['context_kept_min']:.1f} "
            f"| {st['padding_fraction']:.3f} / {st['computed_padding_fraction']:.3f} "
            f"| {row['seconds']:.0f} | {row['final_loss']} "
            f"| {cells(row['eval'])} |"
        )
    lines += [
        f"| encoder at init | - | - | - | - | - | - | {cells(init)} |",
        f"| raw pixels (784) | - | - | - | - | - | - | {pixels['linear']['test_top1']:.2f} "
        f"| {pixels['knn']['top1']:.2f} | (same) | (same) |",
        "",
        "Pretraining commands:",
        "",
        *(f"    {row['command']}" for row in record["policies"].values()),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=468, help="optimizer steps per policy")
    parser.add_argument("--epochs", type=int, default=1, help="schedule length (epochs)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ijepa_policy_quality"))
    parser.add_argument(
        "--report", type=Path, default=quality.REPO / "bench/results/context_policy_quality.md"
    )
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the policies <out>/policy_quality.json already holds; run the rest",
    )
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="no runs: rewrite the report from <out>/policy_quality.json, mask statistics "
        "recomputed (they are a function of the config)",
    )
    args = parser.parse_args(argv)
    from ijepa_ds.config import load_config

    if args.from_json:
        record = json.loads((args.out / "policy_quality.json").read_text())
        for policy, row in record["policies"].items():
            row["masks"] = policy_mask_stats(POLICIES[policy], record["steps"])
        command = record.get("command") or (
            f"python -m bench.policy_quality --steps {record['steps']} "
            f"--epochs {record['epochs']} --out {args.out}"
        )
        write_report(args.report, record, command)
        print(args.report.read_text())
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"steps": args.steps, "epochs": args.epochs, "load_before": os.getloadavg()[0]}
    record["machine"], record["policies"] = quality.machine(), {}
    saved = args.out / "policy_quality.json"
    if args.resume and saved.exists():
        record = json.loads(saved.read_text())
        if (record["steps"], record["epochs"]) != (args.steps, args.epochs):
            raise SystemExit(f"{saved} holds another budget: {record['steps']} steps")
    for policy in args.policies:
        if policy in record["policies"]:
            print(f"{policy}: kept from {saved}", flush=True)
            continue
        folder = args.out / policy
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        run_dir, seconds, cmd = quality.pretrain(folder, args.steps, args.epochs, POLICIES[policy])
        print(f"{policy}: pretrained in {time.perf_counter() - start:.0f} s", flush=True)
        record["policies"][policy] = {
            "command": " ".join(cmd),
            "seconds": seconds,
            "final_loss": quality.final_loss(run_dir),
            "masks": policy_mask_stats(POLICIES[policy], args.steps),
            "eval": evaluate(run_dir, folder, policy),
        }
        (args.out / "policy_quality.json").write_text(json.dumps(record, indent=2))
    run_dir = args.out / args.policies[-1] / "pretrained"
    init_dir = quality.write_init_run(run_dir, args.out / "init")
    record["init"] = evaluate(init_dir, args.out, "init")
    record["pixels"] = pixel_results(load_config(str(run_dir / "config.yaml")).eval)
    record["load_after"] = os.getloadavg()[0]
    record["command"] = "python -m bench.policy_quality " + " ".join(argv or sys.argv[1:])
    (args.out / "policy_quality.json").write_text(json.dumps(record, indent=2))
    write_report(args.report, record, record["command"])
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

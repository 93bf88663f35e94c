"""mask.context_policy: context kept per policy at the paper's scale, and what padding costs.

Run from the repository root (writes ``bench/results/context_policy.md``)::

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python -m bench.context_policy

1. ``ijepa-ds masks stats`` numbers (``ijepa_ds.perf.mask_stats``, the command's own code) for
   the ``vit_h14_in1k`` preset (global batch 2048, micro-batch 128; 32 on 64 ranks, where 128
   would exceed the global batch) on 1, 16 and 64 ranks under each policy, averaged over
   optimizer steps 0..STEPS-1.
2. One fp32 train step (target forward, student forward, loss, backward, AdamW; the trainer's
   ``compute_loss``) of ViT-Tiny/16 at 224, batch 32, one process, under each policy, rounds
   interleaved (every variant sees the same step's masks in a round). group_min uses groups of
   8 (four groups per micro-batch). The padded policies run both as one forward padded to the
   micro-batch's longest (``model.context_chunks=1``) and in length-sorted chunks
   (``IJEPAStudent``'s chunked forward, what training runs with ``model.context_chunks=n``).
   Memory: the bytes of the tensors autograd saves for the backward (activations, counted once
   per storage), an exact per-variant number; the process's peak RSS is given once for the
   whole run. Work: after the timing, every variant's forward and backward are replayed on
   each timed round's masks under ``torch.utils.flop_counter.FlopCounterMode`` (the FLOPs of
   every matmul and attention call, padded positions included), so the cost of a step can be
   split into how much it computes and how fast it computes it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import copy
import resource

import numpy as np
import torch
from torch.utils import flop_counter

from bench import common
from ijepa_ds.config import load_config
from ijepa_ds.masks import build_mask_sampler_from_config
from ijepa_ds.models.from_config import build_encoder_from_config, build_predictor_from_config
from ijepa_ds.models.tokens import length_chunks
from ijepa_ds.perf.mask_stats import mask_stats
from ijepa_ds.train.step import compute_loss
from ijepa_ds.train.student import IJEPAStudent

POLICIES = ("global_min", "group_min", "keep_all")
WORLD_SIZES = (1, 16, 64)
STEPS = 4
VIT_TI16 = [
    *common.VIT_S16, "model.name=vit_tiny", "model.embed_dim=192", "model.depth=12",
    "model.num_heads=3", "model.pred_depth=6", "model.pred_emb_dim=192", "model.pred_num_heads=3",
    "mask.min_keep=10", "data.crop_size=224", "data.batch_size=32", "data.global_batch_size=32",
    "optim.precision=fp32",
]  # fmt: skip
STEP_GROUP = 8  # group_min's group in the step benchmark: 4 groups per micro-batch of 32
CHUNKS = (2, 4, 8)  # model.context_chunks timed for keep_all (group_min: 4, one per group)


def stats_overrides(policy: str, world_size: int) -> list[str]:
    """The overrides of ``ijepa-ds masks stats --config vit_h14_in1k --world-size W ...``."""
    batch = min(128, 2048 // world_size)
    return [f"mask.context_policy={policy}", f"data.batch_size={batch}"]


def stats_table() -> str:
    """Markdown table of the masks stats, mean over STEPS steps, per policy and world size."""
    lines = [
        "| policy | world size | micro-batch x accumulation | drawn | kept | kept / drawn "
        "| target kept | padding: collated / computed (4 chunks) | context width (min-max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for policy in POLICIES:
        for world_size in WORLD_SIZES:
            cfg = load_config("vit_h14_in1k", stats_overrides(policy, world_size))
            rows = [mask_stats(cfg, world_size, step) for step in range(STEPS)]
            mean = {k: float(np.mean([getattr(r, k) for r in rows])) for k in (
                "context_drawn_mean", "context_kept_mean", "context_kept_fraction",
                "target_kept_fraction", "padding_fraction",
                "computed_padding_fraction")}  # fmt: skip
            widths = f"{min(r.context_width_min for r in rows)}-"
            widths += f"{max(r.context_width_max for r in rows)}"
            lines.append(
                f"| {policy} | {world_size} | {rows[0].micro_batch_size} x {rows[0].accumulation} "
                f"| {mean['context_drawn_mean']:.1f} | {mean['context_kept_mean']:.1f} "
                f"| {mean['context_kept_fraction']:.3f} | {mean['target_kept_fraction']:.3f} "
                f"| {mean['padding_fraction']:.3f} / {mean['computed_padding_fraction']:.3f} "
                f"| {widths} |"
            )
    return "\n".join(lines) + "\n"


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels only; on CPU, SDPA (with or without a
# key-padding mask) runs these two ops, counted with torch's own formulas for the others.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


class SavedBytes:
    """saved_tensors_hooks counting the bytes autograd keeps for the backward (one count per
    storage, so views and re-saved tensors are not double counted)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def __enter__(self):
        def pack(t: torch.Tensor):
            storage = t.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
            return t

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    @property
    def mib(self) -> float:
        return sum(self.storages.values()) / 2**20


class StepBench:
    """One model, optimizer and target shared by all variants; masks per policy and step."""

    def __init__(self) -> None:
        self.cfg = load_config("fmnist_tiny", VIT_TI16)
        torch.manual_seed(0)
        self.student = IJEPAStudent(
            build_encoder_from_config(self.cfg), build_predictor_from_config(self.cfg)
        )
        # The same modules and optimizer, run in length chunks (model.context_chunks = n).
        self.chunked = {
            n: IJEPAStudent(self.student.encoder, self.student.predictor, context_chunks=n)
            for n in CHUNKS
        }
        self.target = copy.deepcopy(self.student.encoder).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-5)
        self.imgs = torch.randn(32, 3, 224, 224)
        self.samplers = {}
        for policy in POLICIES:
            overrides = [f"mask.context_policy={policy}", f"mask.group_size={STEP_GROUP}"]
            cfg = load_config("fmnist_tiny", VIT_TI16 + overrides)
            self.samplers[policy] = build_mask_sampler_from_config(cfg, 32)
        self.step, self.saved, self.tokens = 0, {}, {}

    def masks(self, policy: str, step: int):
        return self.samplers[policy](np.arange(step * 32, (step + 1) * 32))

    def engine(self, chunks: int) -> IJEPAStudent:
        return self.chunked[chunks] if chunks > 1 else self.student

    def run(self, name: str, policy: str, chunks: int = 1) -> None:
        """One train step under ``policy``, the student in ``chunks`` length chunks."""
        masks_enc, masks_pred = self.masks(policy, self.step)
        engine = self.engine(chunks)
        self.opt.zero_grad(set_to_none=True)
        with SavedBytes() as saved:
            loss, _ = compute_loss(engine, self.target, self.imgs, masks_enc, masks_pred,
                                   "smooth_l1", "fp32")  # fmt: skip
        loss.backward()
        self.opt.step()
        real = int((masks_enc[0] >= 0).sum()) / 32
        width = sum(len(idx) * w for idx, w in length_chunks(masks_enc, chunks)) / 32
        self.saved.setdefault(name, []).append(saved.mib)
        self.tokens.setdefault(name, []).append((real, width))

    def count_flops(self, policy: str, chunks: int, step: int) -> float:
        """FLOPs of step ``step``'s forward and backward under ``policy`` (no optimizer step:
        the weights, and so every later count, stay as they are)."""
        masks_enc, masks_pred = self.masks(policy, step)
        engine = self.engine(chunks)
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
        with counter:
            loss, _ = compute_loss(engine, self.target, self.imgs, masks_enc, masks_pred,
                                   "smooth_l1", "fp32")  # fmt: skip
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def step_variants() -> list[tuple[str, str, int]]:
    """(name, policy, context chunks) of every timed variant, global_min first."""
    variants = [
        ("global_min", "global_min", 1),
        ("group_min (1 padded forward)", "group_min", 1),
        ("group_min (4 chunks)", "group_min", 4),
        ("keep_all (1 padded forward)", "keep_all", 1),
    ]
    return variants + [(f"keep_all ({n} chunks)", "keep_all", n) for n in CHUNKS]


def step_table(repeats: int, warmup: int) -> str:
    bench = StepBench()
    specs = step_variants()
    variants = {
        name: lambda name=name, policy=policy, n=n: bench.run(name, policy, n)
        for name, policy, n in specs
    }

    def advance() -> None:  # a new optimizer step (new masks) for each round
        bench.step += 1

    variants["_next"] = advance
    times = common.interleaved(variants, repeats, warmup)
    timed_steps = range(warmup, warmup + repeats)  # round r trains on step r's masks
    flops = {
        name: [bench.count_flops(policy, n, step) for step in timed_steps]
        for name, policy, n in specs
    }
    base = [cpu for _, cpu in times["global_min"]]
    lines = [
        "| variant | step CPU s (median) | vs global_min (median, min-max) | real context / "
        "computed width per sample | GFLOP per step | FLOP vs global_min | CPU s per FLOP "
        "vs global_min (median) | autograd-saved MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, _, _ in specs:
        cpu = [c for _, c in times[name]]
        ratio, lo, hi = common.ratio_spread(cpu, base)  # per round: cpu / base
        work = [f / b for f, b in zip(flops[name], flops["global_min"])]
        per_flop = common.median([c / b / w for c, b, w in zip(cpu, base, work)])
        real = np.mean([t[0] for t in bench.tokens[name][warmup:]])
        width = np.mean([t[1] for t in bench.tokens[name][warmup:]])
        saved = np.mean(bench.saved[name][warmup:])
        lines.append(
            f"| {name} | {common.median(cpu):.3f} | {ratio:.3f} ({lo:.3f}-{hi:.3f}) "
            f"| {real:.1f} / {width:.1f} | {np.mean(flops[name]) / 1e9:.1f} "
            f"| {np.mean(work):.3f} | {per_flop:.3f} | {saved:.1f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return "\n".join(lines) + f"\n\nProcess peak RSS over the whole run: {peak:.0f} MiB.\n"


COMMANDS = """Commands (repository root, `OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu`):

- this file: `python -m bench.context_policy` (about 10 minutes on 2 cores);
- one row of the first table, per step S in 0-3 (B = 128, or 32 on 64 ranks):
  `python -m ijepa_ds masks stats --config vit_h14_in1k --world-size W --step S
  mask.context_policy=P data.batch_size=B` (add `--table` for a table).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="bench/results/context_policy.md")
    args = parser.parse_args()
    start = common.machine_info()
    masks = stats_table()
    steps = step_table(args.repeats, args.warmup)
    text = (
        "# mask.context_policy\n\n"
        + common.machine_header(start, common.load_average())
        + "\n"
        + COMMANDS
        + f"\n## masks stats, vit_h14_in1k (mean of steps 0-{STEPS - 1})\n\n"
        + masks
        + "\n## fp32 train step, ViT-Tiny/16 at 224, batch 32, 1 process "
        + f"({args.warmup} warm-up + {args.repeats} timed rounds, interleaved)\n\n"
        + steps
    )
    common.write_result(args.out, text)


if __name__ == "__main__":
    main()

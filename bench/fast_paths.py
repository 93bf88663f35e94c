"""Fast paths vs a reference-style step: the full training step, side by side, same masks.

Run from the repository root (one rank; ``--nproc_per_node 2`` works too)::

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 1 \\
        bench/fast_paths.py --image-size 224 --batch 8 --repeats 6

Every variant is a real trainer (``build_trainer``: DeepSpeed engine, fp32 EMA target, four
AdamW groups) and runs the real micro-step (``ijepa_ds.train.loop.micro_step``: target
forward, student forward, loss, backward, optimizer step) plus the EMA update. Each round
feeds the SAME batch (images and masks) to every variant, one after the other (interleaved),
so the machine's load and the token counts are shared; the reported ratio is the median over
rounds of the per-round ratio.

Variants: the reference-style step (eager softmax attention, the reference's copied int64
index, the full last predictor block) in fp32 (the baseline) and bf16 (DeepSpeed bf16 student,
bf16 autocast target); the fast fp32 step (SDPA, expand-index gather, last predictor block
pruned to its mask-token rows), the same without the pruning (to separate its share), and the
fast bf16 step as shipped (``model.attn_impl=auto``, which picks eager attention for bf16 on
CPU).

``--compile`` instead compares the student's forward+backward eager vs ``torch.compile``
(encoder and predictor), including compile time and a recompilation for a new mask shape;
``--ema`` the fused EMA update against a per-tensor loop (single process, no torchrun).
"""

from __future__ import annotations

import argparse
import time

import common  # sets OMP_NUM_THREADS, puts the repo on sys.path
import torch

from ijepa_ds.backend.ds_config import build_ds_config
from ijepa_ds.config import load_config
from ijepa_ds.models.layers import resolve_attn_impl
from ijepa_ds.perf.flops import StepShape, linear_flops, mfu, shape_from_config, step_flops
from ijepa_ds.train.loop import micro_step
from ijepa_ds.train.trainer import build_loader, build_trainer


def variant(attn: str, gather: str, prune: bool, precision: str = "fp32") -> list[str]:
    """Config overrides of one variant: attention kernel, token gather, pruning, precision."""
    return [
        f"model.attn_impl={attn}",
        f"model.mask_gather={gather}",
        f"model.predictor_prune_last={str(prune).lower()}",
        f"optim.precision={precision}",
    ]


BASELINE = "reference-style fp32 (eager + copy, no pruning)"
FAST = "fast fp32 (sdpa + index + pruning)"
UNPRUNED = "fast fp32 without pruning (sdpa + index)"
BF16_PAIR = (
    "reference-style bf16 (eager + copy, no pruning)",
    "fast bf16 as shipped (auto + index + pruning)",
)
VARIANTS = {
    BASELINE: variant("eager", "copy", prune=False),
    FAST: variant("sdpa", "index", prune=True),
    UNPRUNED: variant("sdpa", "index", prune=False),
    BF16_PAIR[1]: variant("auto", "index", prune=True, precision="bf16"),
    BF16_PAIR[0]: variant("eager", "copy", prune=False, precision="bf16"),
}


def pruning_saved_flops(s: StepShape) -> float:
    """Model FLOPs per image that last-block pruning skips (forward + 2x backward).

    Per predictor sequence, the context rows (k_enc of them) of the last block get no output
    projection, no MLP and no attention row (q k^T and attn v: 4 k_enc T P for T tokens);
    their q still comes out of the one qkv matmul over all rows.
    """
    width, seq_len = s.predictor.dim, s.k_enc + s.k_pred
    forward = (
        linear_flops(s.k_enc, width, width)
        + 2 * linear_flops(s.k_enc, width, s.predictor.mlp_hidden)
        + 4.0 * s.k_enc * seq_len * width
    )
    return 3.0 * forward * s.nenc * s.npred


def bench_overrides(image_size: int, batch: int, world: int, steps: int) -> list[str]:
    return common.VIT_S16 + [
        f"data.crop_size={image_size}",
        f"data.batch_size={batch}",
        f"data.global_batch_size={batch * world}",
        f"data.synthetic_size={batch * world * (steps + 1)}",
        "optim.precision=fp32",
        "deepspeed.config=zero1",
        f"schedule.max_steps={steps}",
        "schedule.epochs=1",
        "schedule.warmup_epochs=0",
    ]


def make_step(trainer, batches: list, counter: list[int]):
    """A closure running one full optimizer step on the next pre-loaded batch."""

    def run() -> None:
        step = counter[0]
        micro_step(trainer, batches[step], step)
        if trainer.engine.step_applied():
            trainer.target.ema_update(trainer.schedule.momentum_at(step))
        counter[0] += 1

    return run


def run_comparison(args, env) -> str:
    rounds = args.repeats + 1  # one warm-up round
    base = bench_overrides(args.image_size, args.batch, env.world_size, rounds)
    trainers, batches = {}, None
    for name, extra in VARIANTS.items():
        cfg = load_config("fmnist_tiny", base + extra)
        trainers[name] = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
        if batches is None:  # the same images and masks for every variant
            batches = list(build_loader(trainers[name], 0))[:rounds]
    steps = {name: make_step(t, batches, [0]) for name, t in trainers.items()}
    peaks = {p: common.matmul_peak_flops(getattr(torch, p)) for p in ("float32", "bfloat16")}
    times = common.interleaved(steps, args.repeats)
    k_enc = sum(b[3][0].shape[1] for b in batches[1:]) / args.repeats
    k_pred = sum(b[4][0].shape[1] for b in batches[1:]) / args.repeats
    # The unpruned baseline's shape: the full computation, from which pruning subtracts.
    shape = shape_from_config(trainers[BASELINE].cfg, k_enc, k_pred)
    full = step_flops(shape).model
    flops = {
        name: full - (pruning_saved_flops(shape) if t.cfg.model.predictor_prune_last else 0.0)
        for name, t in trainers.items()
    }
    return format_table(times, args, env, peaks, flops, (k_enc, k_pred))


def format_table(times, args, env, peaks: dict, flops: dict, tokens) -> str:
    """The markdown table; ``flops[name]`` is the model FLOPs per image that variant runs."""
    full, pruned = max(flops.values()), flops[FAST]
    auto = resolve_attn_impl("auto", "cpu", torch.bfloat16)
    lines = [
        f"ViT-S/16 student (width 384, depth 12, 6 heads; predictor 384 x 6), "
        f"{args.image_size} px ({(args.image_size // 16) ** 2} patches), batch {args.batch} per "
        f"rank, {env.world_size} rank(s), ZeRO-1; mean tokens per mask K_enc {tokens[0]:.1f}, "
        f"K_pred {tokens[1]:.1f}; {args.repeats} interleaved rounds after 1 warm-up round; "
        f"`attn_impl=auto` resolved to {auto} for bf16 on CPU. Model FLOPs per image "
        f"{full / 1e9:.2f} G, {pruned / 1e9:.2f} G with the last predictor block pruned "
        f"({100 * (1 - pruned / full):.1f}% fewer); measured matmul peak of one core (1024^3 "
        f"GEMM, best of 7 in CPU time, this run): fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s (MFU of each row: the FLOPs it runs "
        "against its own precision's peak).",
        "",
        "| variant | median wall s/step | median CPU s/step | img/s (CPU time) | MFU "
        "(CPU time) | speed-up vs reference fp32, wall (min-max) | speed-up vs reference "
        "fp32, CPU (min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    cpu_of = {name: [c for _, c in samples] for name, samples in times.items()}
    base_wall = [w for w, _ in times[BASELINE]]
    for name, samples in times.items():
        wall, cpu = [w for w, _ in samples], cpu_of[name]
        img_s = args.batch / common.median(cpu)
        peak = peaks["bfloat16" if "bf16" in name else "float32"]
        rw, rc = common.ratio_spread(base_wall, wall), common.ratio_spread(cpu_of[BASELINE], cpu)
        lines.append(
            f"| {name} | {common.median(wall):.2f} | {common.median(cpu):.2f} | {img_s:.2f} | "
            f"{100 * mfu(img_s, flops[name], peak):.1f}% | {rw[0]:.3f} ({rw[1]:.3f}-"
            f"{rw[2]:.3f}) | {rc[0]:.3f} ({rc[1]:.3f}-{rc[2]:.3f}) |"
        )
    same = common.ratio_spread(cpu_of[BF16_PAIR[0]], cpu_of[BF16_PAIR[1]])
    prune = common.ratio_spread(cpu_of[UNPRUNED], cpu_of[FAST])
    lines += [
        "",
        f"At equal precision, bf16: {BF16_PAIR[1]} vs {BF16_PAIR[0]}, CPU time: "
        f"{same[0]:.3f} ({same[1]:.3f}-{same[2]:.3f}).",
        f"Pruning alone: {FAST} vs {UNPRUNED}, CPU time: {prune[0]:.3f} ({prune[1]:.3f}-"
        f"{prune[2]:.3f}).",
    ]
    return "\n".join(lines) + "\n"


def run_compile_study(args) -> str:
    """Student forward+backward, eager vs torch.compile (no DeepSpeed), one process.

    Times the first compiled call (compilation), a call with new mask shapes (K_enc and
    K_pred change every step in training, which makes torch.compile recompile), then
    ``--repeats`` interleaved rounds at the first shapes.
    """
    start = common.machine_info()
    from ijepa_ds.masks import build_mask_sampler
    from ijepa_ds.train.trainer import build_student

    cfg = load_config("fmnist_tiny", bench_overrides(args.image_size, args.batch, 1, 1))
    student = build_student(cfg)
    compiled = torch.nn.Module()
    compiled.encoder = torch.compile(student.encoder)
    compiled.predictor = torch.compile(student.predictor)
    grid = args.image_size // 16
    sampler = build_mask_sampler(
        "ijepa_ds", grid_size=(grid, grid), global_batch_size=64, seed=0, min_keep=4
    )
    imgs = torch.randn(args.batch, 3, args.image_size, args.image_size)
    shapes = [sampler(list(range(first, first + args.batch))) for first in (0, 64, 128)]

    def step(model, masks) -> None:
        masks_enc, masks_pred = masks
        z = model.predictor(model.encoder(imgs, masks_enc), masks_enc, masks_pred)
        z.square().mean().backward()

    lines = ["| event | wall s | K_enc, K_pred |", "|---|---|---|"]
    for label, masks in zip(("first compiled call", "new mask shapes", "third shapes"), shapes):
        start = time.perf_counter()
        step(compiled, masks)
        k = (masks[0][0].shape[1], masks[1][0].shape[1])
        lines.append(f"| {label} | {time.perf_counter() - start:.1f} | {k} |")
    times = common.interleaved(
        {"eager": lambda: step(student, shapes[0]), "compiled": lambda: step(compiled, shapes[0])},
        args.repeats,
    )
    eager, comp = ([c for _, c in times[k]] for k in ("eager", "compiled"))
    ratio = common.ratio_spread(eager, comp)
    lines += [
        "",
        f"Steady state ({args.repeats} interleaved rounds, CPU time): eager "
        f"{common.median(eager):.3f} s, compiled {common.median(comp):.3f} s, speed-up "
        f"{ratio[0]:.3f} ({ratio[1]:.3f}-{ratio[2]:.3f}).",
    ]
    header = common.machine_header(start, common.load_average())
    return header + "\n" + "\n".join(lines) + "\n"


def run_ema_study(args) -> str:
    """The EMA update: fused ``torch._foreach_*`` (TargetEncoder.ema_update) vs a per-tensor
    loop, on the ViT-S/16 encoder, interleaved, CPU time."""
    start = common.machine_info()
    from ijepa_ds.train.target import TargetEncoder
    from ijepa_ds.train.trainer import build_student

    cfg = load_config("fmnist_tiny", bench_overrides(args.image_size, args.batch, 1, 1))
    encoder = build_student(cfg).encoder
    target = TargetEncoder(encoder, partitioned=False)
    target.bind(encoder)
    pairs = [(t.data, s.data) for t, s in zip(target.module.parameters(), encoder.parameters())]

    @torch.no_grad()
    def loop_update() -> None:
        for t, s in pairs:
            t.mul_(0.996).add_(s, alpha=0.004)

    times = common.interleaved(
        {"foreach": lambda: target.ema_update(0.996), "loop": loop_update}, args.repeats * 5
    )
    fused, plain = ([c for _, c in times[k]] for k in ("foreach", "loop"))
    ratio = common.ratio_spread(plain, fused)
    numel = sum(t.numel() for t, _ in pairs)
    header = common.machine_header(start, common.load_average())
    return header + (
        f"\nEMA of {numel / 1e6:.1f} M parameters ({len(pairs)} tensors), {args.repeats * 5} "
        f"interleaved rounds, CPU time: foreach {1e3 * common.median(fused):.1f} ms, per-tensor "
        f"loop {1e3 * common.median(plain):.1f} ms, speed-up {ratio[0]:.2f} "
        f"({ratio[1]:.2f}-{ratio[2]:.2f}).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--compile", action="store_true", help="the torch.compile study instead")
    parser.add_argument("--ema", action="store_true", help="the EMA update study instead")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.compile or args.ema:
        text = run_compile_study(args) if args.compile else run_ema_study(args)
        if args.out:
            common.write_result(args.out, text)
        print(text)
        return
    common.run_on_ranks(lambda env: run_comparison(args, env), args.out)


if __name__ == "__main__":
    main()

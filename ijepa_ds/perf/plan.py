"""Memory planner: will a config fit on a GPU of a given size, per rank, and what would?

``plan(cfg, world_size, gpu_mem_gib)`` resolves the DeepSpeed config exactly as training
would, samples the real mask sampler for the expected tokens per mask, and evaluates the
memory model (``ijepa_ds.perf.memory``) and the FLOP model (``ijepa_ds.perf.flops``). When
the config does not fit, it tries the usual remedies (activation checkpointing, ZeRO-3,
smaller micro-batches with accumulation, optimizer offload) and lists those that would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from ijepa_ds.config import gradient_accumulation_steps, resolved_global_batch
from ijepa_ds.models.layers import resolve_attn_impl
from ijepa_ds.perf.flops import StepFlops, StepShape, shape_from_config, step_flops
from ijepa_ds.perf.memory import (
    GIB,
    ActivationSettings,
    EngineSettings,
    MemoryEstimate,
    deepspeed_estimate,
    estimate_memory,
    param_counts,
)


def expected_tokens(cfg, global_batch: int, steps: int = 8) -> tuple[float, float]:
    """Mean tokens per context mask and per target mask over ``steps`` steps of the sampler.

    The context width depends on the step (``mask.context_policy``: the step's, the group's
    shortest context, or the micro-batch's longest with padding), so the sampler is called as
    rank 0 of each step would call it, built as training builds it. Widths are the tensors'
    (padding included): padded tokens cost memory and FLOPs like real ones. Where the masks
    can pad, the student runs ``model.context_chunks`` length chunks, each padded to its own
    longest: the width is then the chunks' sample-weighted mean.
    """
    from ijepa_ds.masks import build_mask_sampler_from_config, context_may_pad
    from ijepa_ds.models.tokens import length_chunks

    sampler = build_mask_sampler_from_config(cfg, global_batch)
    micro = min(cfg.data.batch_size, global_batch)
    chunks = cfg.model.context_chunks if context_may_pad(cfg) else 1
    k_enc, k_pred = [], []
    for step in range(steps):
        first = step * global_batch
        masks_enc, masks_pred = sampler(np.arange(first, first + micro))
        if chunks > 1:
            parts = length_chunks(masks_enc, chunks)
            k_enc.append(sum(len(idx) * width for idx, width in parts) / micro)
        else:
            k_enc.append(np.mean([m.shape[1] for m in masks_enc]))
        k_pred.append(np.mean([m.shape[1] for m in masks_pred]))
    return float(np.mean(k_enc)), float(np.mean(k_pred))


@dataclass
class PlanResult:
    """The planner's answer for one config on ``world_size`` GPUs of ``gpu_mem_gib``."""

    name: str
    shape: StepShape
    engine: EngineSettings
    act: ActivationSettings
    estimate: MemoryEstimate
    flops: StepFlops
    accumulation: int
    gpu_mem_gib: float
    headroom: float
    ds_estimate: float | None
    alternatives: list[tuple[str, float]] = field(default_factory=list)

    @property
    def usable_bytes(self) -> float:
        return self.gpu_mem_gib * GIB * (1.0 - self.headroom)

    @property
    def fits(self) -> bool:
        return self.estimate.peak <= self.usable_bytes


def _settings(
    cfg, world_size: int, device: str = "cuda"
) -> tuple[EngineSettings, ActivationSettings]:
    """Engine knobs from the DeepSpeed config training would resolve, and the batch/switches."""
    from ijepa_ds.backend.ds_config import build_ds_config

    eng = EngineSettings.from_ds_config(build_ds_config(cfg, world_size), world_size)
    m = cfg.model
    # On GPUs attn_impl "auto" always means SDPA.
    attn_impl = resolve_attn_impl(m.attn_impl, device, torch.bfloat16)
    act = ActivationSettings(
        cfg.data.batch_size, m.act_ckpt_encoder, m.act_ckpt_predictor, attn_impl, m.mask_gather
    )
    return eng, act


def _replace(cfg, **sections: dict):
    """A copy of ``cfg`` with fields of some sections replaced: ``model={"depth": 2}``."""
    updates = {
        name: dataclasses.replace(getattr(cfg, name), **fields) for name, fields in sections.items()
    }
    return dataclasses.replace(cfg, **updates)


CKPT = {"act_ckpt_encoder": 1, "act_ckpt_predictor": 1}
CKPT_ARGS = "model.act_ckpt_encoder=1 model.act_ckpt_predictor=1"
ZERO3 = {"config": "zero3", "zero_stage": -1}
REMEDIES = (
    (CKPT_ARGS, {"model": CKPT}),
    ("deepspeed.config=zero3", {"deepspeed": ZERO3}),
    (f"deepspeed.config=zero3 {CKPT_ARGS}", {"deepspeed": ZERO3, "model": CKPT}),
    (
        f"deepspeed.config=zero3 deepspeed.offload_optimizer=true {CKPT_ARGS}",
        {"deepspeed": {**ZERO3, "offload_optimizer": True}, "model": CKPT},
    ),
)


def _alternatives(
    cfg, world_size: int, shape: StepShape, usable: float, device: str
) -> list[tuple[str, float]]:
    """Overrides that would fit, with their modelled peak (at most four)."""
    candidates = list(REMEDIES)
    batch = cfg.data.batch_size // 2
    while batch >= 1:
        candidates.append((f"data.batch_size={batch}", {"data": {"batch_size": batch}}))
        batch //= 2
    found: list[tuple[str, float]] = []
    for label, sections in candidates:
        settings = _settings(_replace(cfg, **sections), world_size, device)
        peak = estimate_memory(shape, *settings, device=device).peak
        if peak <= usable and all(peak != other for _, other in found):
            found.append((label, peak))
    return found[:4]


def plan(
    cfg,
    world_size: int,
    gpu_mem_gib: float,
    headroom: float = 0.1,
    name: str = "",
    device: str = "cuda",
) -> PlanResult:
    """Plan ``cfg`` (a validated ``ijepa_ds.config.Config``) on ``world_size`` GPUs.

    ``headroom`` is the fraction of the GPU kept free for what the model leaves out (CUDA
    context, NCCL buffers, allocator fragmentation). ``device="cpu"`` plans CPU ranks instead
    (``gpu_mem_gib`` is then each rank's share of RAM): host memory is the device there, so
    the process itself and rank 0's copy of the target at a save count.
    """

    eng, act = _settings(cfg, world_size, device)
    global_batch = resolved_global_batch(cfg.data, world_size)
    shape = shape_from_config(cfg, *expected_tokens(cfg, global_batch))
    m = cfg.model
    result = PlanResult(
        name=name,
        shape=shape,
        engine=eng,
        act=act,
        estimate=estimate_memory(shape, eng, act, m.qkv_bias, device),
        flops=step_flops(shape, m.act_ckpt_encoder, m.act_ckpt_predictor),
        accumulation=gradient_accumulation_steps(
            dataclasses.replace(cfg.data, batch_size=act.batch), world_size
        ),
        gpu_mem_gib=gpu_mem_gib,
        headroom=headroom,
        ds_estimate=deepspeed_estimate(param_counts(shape, m.qkv_bias), eng),
    )
    if not result.fits:
        result.alternatives = _alternatives(cfg, world_size, shape, result.usable_bytes, device)
    return result


ROWS = (
    ("parameters", "params"),
    ("fp32 master weights", "master"),
    ("Adam moments", "moments"),
    ("EMA target encoder (fp32)", "target"),
    ("persistent gradient buffers", "grad_buffers"),
    ("gradients at the step", "grads_step"),
    ("ZeRO-3 gathered parameters", "gathered"),
    ("activations: context encoder", "act_encoder"),
    ("activations: predictor", "act_predictor"),
    ("target features and loss", "act_targets"),
    ("forward transients", "fwd_transient"),
    ("backward transients", "bwd_transient"),
    ("optimizer-step transients", "step_transient"),
    ("process runtime (CPU ranks)", "runtime"),
)


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f}"


def _header(r: PlanResult) -> list[str]:
    s, e, a = r.shape, r.engine, r.act
    counts = param_counts(s)
    return [
        f"plan: {r.name or 'config'} | encoder {s.encoder.dim}x{s.encoder.depth} "
        f"(patch {s.patch_size}, N={s.num_patches}), predictor {s.predictor.dim}x"
        f"{s.predictor.depth} | {counts.trainable / 1e6:.1f} M trainable parameters",
        f"{e.world_size} {r.estimate.device.upper()} ranks x batch {a.batch} x accumulation "
        f"{r.accumulation} | "
        f"ZeRO-{e.zero_stage} | {e.precision} | attention {a.attn_impl} | act ckpt encoder "
        f"{a.act_ckpt_encoder} / predictor {a.act_ckpt_predictor} | offload optimizer "
        f"{e.offload_optimizer}, params {e.offload_param}",
        f"tokens per mask (sampled): context {s.k_enc:.1f}, target {s.k_pred:.1f} "
        f"(x{s.npred} targets)",
        "",
        f"{'per rank':<34}{'GiB':>8}",
    ]


def format_plan(r: PlanResult) -> str:
    """The planner's table, verdict, FLOPs and remedies as printable text."""
    est = r.estimate.as_dict()
    lines = _header(r)
    lines += [f"{label:<34}{_gib(est[key])}" for label, key in ROWS if est[key] > 0]
    peaks = r.estimate.phase_peaks()
    lines.append(f"{'peak (' + r.estimate.peak_phase + ')':<34}{_gib(r.estimate.peak)}")
    lines.append("  " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in peaks.items()))
    if r.estimate.host:
        lines.append(f"{'host memory (offloaded)':<34}{_gib(r.estimate.host)}")
    if r.estimate.device == "cuda" and r.estimate.save_host:
        lines.append(f"{'host memory at a save (rank 0)':<34}{_gib(r.estimate.save_host)}")
    if r.ds_estimate is not None:
        lines.append(f"DeepSpeed's own model-state estimate (no target): {r.ds_estimate / GIB:.2f}")
    f = r.flops
    lines += [
        "",
        f"FLOPs per image: {f.model / 1e9:.1f} G model (context {f.context_fwd / 1e9:.1f} fwd "
        f"+ {f.context_bwd / 1e9:.1f} bwd, target {f.target_fwd / 1e9:.1f}, predictor "
        f"{f.predictor_fwd / 1e9:.1f} fwd + {f.predictor_bwd / 1e9:.1f} bwd), "
        f"{f.hardware / 1e9:.1f} G with recomputation",
        "",
        _verdict(r),
    ]
    if not r.fits:
        lines += [
            f"  would fit with {label}: peak {p / GIB:.2f} GiB" for label, p in r.alternatives
        ]
        if not r.alternatives:
            lines.append("  none of act ckpt, ZeRO-3, offload or smaller micro-batches fits")
    return "\n".join(lines) + "\n"


def _verdict(r: PlanResult) -> str:
    usable = r.usable_bytes / GIB
    peak = r.estimate.peak / GIB
    budget = f"{usable:.1f} GiB usable of {r.gpu_mem_gib:g} GiB ({100 * r.headroom:.0f}% kept free)"
    if r.fits:
        return f"FITS: modelled peak {peak:.2f} GiB <= {budget}"
    est = r.estimate.as_dict()
    biggest = sorted(ROWS, key=lambda row: -est[row[1]])[:2]
    top = ", ".join(f"{label} {est[key] / GIB:.2f} GiB" for label, key in biggest)
    return f"DOES NOT FIT: modelled peak {peak:.2f} GiB > {budget}; largest terms: {top}"

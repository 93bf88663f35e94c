"""Per-rank memory model of one I-JEPA training step under DeepSpeed ZeRO 0-3.

Model states (parameters, master weights, moments, gradients, EMA target, ZeRO buffers) are
modelled in ``ijepa_ds.perf.model_states``, whose names are importable from here too; this
module adds the activations and combines both into the per-rank peak.

Activations per rank (batch B per rank, ``lp`` bytes; the target runs without grad): per
transformer block and token, autograd saves ``8 D + 2 H`` elements with SDPA (block input,
norm outputs, qkv, attention output, residual, MLP hidden before and after GELU) and
``8 D + 2 H + heads x T`` with eager attention (contiguous q/k/v copies instead of the qkv
buffer, plus the softmax matrix), plus a few fp32 statistics. The patch tokens [B, N, D] are
saved too (by the gather that keeps the context tokens). A block under activation
checkpointing keeps only its input (D per token) and recomputes the rest during backward,
one block at a time. The fp32 target features [B, N, D], the gathered targets and the fp32
prediction stay alive through the step.

The peak is the largest of three moments: end of forward (activations + loss temporaries),
backward (activations + reduce bucket + recomputed block) and optimizer step (gradients + step
temporaries), each on top of the persistent states. A save adds, on rank 0, a host-memory copy
of the full fp32 target (``TargetEncoder.full_state_dict``). On CPU ranks (``device="cpu"``)
host memory is the device: that copy is a fourth moment, "save", and the process itself
(Python, torch, DeepSpeed: ``CPU_RUNTIME_BYTES``) is under every moment.
``bench/plan_validation.py`` checks every term against real 2-rank runs on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ijepa_ds.perf.flops import StepShape, TransformerShape
from ijepa_ds.perf.model_states import (
    DS_MAX_LIVE_PARAMETERS,
    DS_MAX_REUSE_DISTANCE,
    DS_PREFETCH_BUCKET_SIZE,
    DS_REDUCE_BUCKET_SIZE,
    EngineSettings,
    ParamCounts,
    block_params,
    deepspeed_estimate,
    model_state_bytes,
    param_counts,
)

__all__ = [
    "DS_MAX_LIVE_PARAMETERS",
    "DS_MAX_REUSE_DISTANCE",
    "DS_PREFETCH_BUCKET_SIZE",
    "DS_REDUCE_BUCKET_SIZE",
    "CPU_RUNTIME_BYTES",
    "DEVICES",
    "GIB",
    "ActivationSettings",
    "EngineSettings",
    "MemoryEstimate",
    "ParamCounts",
    "activation_bytes",
    "block_params",
    "block_saved_elements",
    "deepspeed_estimate",
    "estimate_memory",
    "model_state_bytes",
    "param_counts",
    "stack_saved_bytes",
]

GIB = 1024.0**3
# A CPU rank's resident set before any model exists: Python 3.11 with torch 2.14, DeepSpeed 0.19
# and this package imported, and a gloo group (psutil; bench/results/scale_rehearsal.md).
CPU_RUNTIME_BYTES = 0.70 * GIB
DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class ActivationSettings:
    """Per-rank batch and the switches that change activation memory."""

    batch: int
    act_ckpt_encoder: int = 0
    act_ckpt_predictor: int = 0
    attn_impl: str = "sdpa"
    mask_gather: str = "index"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank on the device; ``host`` is what offload moves to CPU memory."""

    params: float
    master: float
    moments: float
    target: float
    grad_buffers: float  # held across steps (ZeRO-3 gradient partition and reduce bucket)
    grads_step: float  # gradients alive at the optimizer step, freed after it
    gathered: float  # ZeRO-3: full 16-bit parameters kept between forward and backward
    act_encoder: float
    act_predictor: float
    act_targets: float
    fwd_transient: float
    bwd_transient: float
    step_transient: float
    host: float = 0.0
    save_host: float = 0.0  # rank 0 at a save: the full fp32 target copied to host memory
    device: str = "cuda"

    @property
    def runtime(self) -> float:
        """The process itself on a CPU rank (``CPU_RUNTIME_BYTES``); nothing on a GPU."""
        return CPU_RUNTIME_BYTES if self.device == "cpu" else 0.0

    @property
    def persistent(self) -> float:
        return self.params + self.master + self.moments + self.target + self.grad_buffers

    @property
    def model_states(self) -> float:
        """Parameters, master weights, moments, target and gradients (at the step)."""
        return self.persistent + self.grads_step

    @property
    def activations(self) -> float:
        """Saved student activations plus target features, at the end of the forward."""
        return self.act_encoder + self.act_predictor + self.act_targets

    def phase_peaks(self) -> dict[str, float]:
        """Modelled live bytes at the end of forward, during backward, at the step; on CPU
        ranks also at a save (rank 0), each with the process's own runtime."""
        live = self.persistent + self.gathered + self.activations
        peaks = {
            "forward": live + self.fwd_transient,
            "backward": live + self.bwd_transient,
            "step": self.persistent + self.grads_step + self.step_transient,
        }
        if self.device == "cpu":  # host memory is the device: offloaded states count too
            peaks["save"] = self.persistent + self.save_host
            peaks = {phase: value + self.runtime + self.host for phase, value in peaks.items()}
        return peaks

    @property
    def peak(self) -> float:
        return max(self.phase_peaks().values())

    @property
    def peak_phase(self) -> str:
        peaks = self.phase_peaks()
        return max(peaks, key=peaks.get)

    def as_dict(self) -> dict[str, float]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "device"}
        out.update(persistent=self.persistent, model_states=self.model_states)
        out.update(activations=self.activations, runtime=self.runtime, peak=self.peak)
        return out


def block_saved_elements(t: TransformerShape, seq_len: float, attn_impl: str) -> float:
    """Elements saved for backward per token of one block (module docstring)."""
    if attn_impl == "eager":
        return 8 * t.dim + 2 * t.mlp_hidden + t.num_heads * seq_len + 4
    return 8 * t.dim + 2 * t.mlp_hidden + t.num_heads + 4


def stack_saved_bytes(
    t: TransformerShape, seq_len: float, sequences: float, every: int, attn_impl: str, lp: int
) -> tuple[float, float]:
    """(saved bytes of all blocks, backward transient) for one stack of blocks.

    With activation checkpointing a checkpointed block is recomputed after the blocks behind
    it have freed theirs, so the recomputation adds memory only when it is the last block.
    """
    tokens = seq_len * sequences
    full = block_saved_elements(t, seq_len, attn_impl) * tokens * lp
    ckpt = len(range(0, t.depth, every)) if every > 0 else 0
    saved = (t.depth - ckpt) * full + ckpt * t.dim * tokens * lp
    last_is_ckpt = every > 0 and (t.depth - 1) % every == 0
    return saved, (full if last_is_ckpt else 0.0)


def activation_bytes(s: StepShape, act: ActivationSettings, lp: int) -> dict[str, float]:
    """Activation terms per rank: saved tensors of encoder and predictor, target features,
    and the transients of forward (loss, eager scores) and backward (recomputed block)."""
    b, d, p = act.batch, s.encoder.dim, s.predictor.dim
    ctx_tokens = b * s.nenc * s.k_enc
    enc, enc_re = stack_saved_bytes(
        s.encoder, s.k_enc, b * s.nenc, act.act_ckpt_encoder, act.attn_impl, lp
    )
    image = b * s.in_chans * s.num_patches * s.patch_size**2 * lp  # saved by the patch conv
    patches = b * s.num_patches * d * lp  # all N patch tokens, saved by the gather(s)
    enc += image + patches + 2 * ctx_tokens * d * lp  # + final norm and predictor_embed inputs
    if act.mask_gather == "copy":
        enc += 8.0 * ctx_tokens * d  # the repeated int64 index is saved for the backward
    seqs = b * s.nenc * s.npred
    seq = s.k_enc + s.k_pred
    pred, pred_re = stack_saved_bytes(
        s.predictor, seq, seqs, act.act_ckpt_predictor, act.attn_impl, lp
    )
    pred += seqs * (seq * p + s.k_pred * p) * lp  # final norm input, proj input
    target_rows = seqs * s.k_pred * d
    fwd = 8.0 * target_rows  # elementwise temporaries of the fp32 loss
    if act.attn_impl == "eager":  # scores and scaled scores before the softmax, one block
        fwd += 2 * seqs * s.predictor.num_heads * seq * seq * lp
    return dict(
        act_encoder=enc,
        act_predictor=pred,
        # fp32 target features [B, N, D], gathered targets, fp32 prediction for the loss
        act_targets=4.0 * (b * s.num_patches * d + 2 * target_rows),
        fwd_transient=fwd,
        # The encoder recomputes after the predictor's activations are gone.
        bwd_transient=max(pred_re, enc_re - pred),
    )


def estimate_memory(
    s: StepShape,
    eng: EngineSettings,
    act: ActivationSettings,
    qkv_bias: bool = True,
    device: str = "cuda",
) -> MemoryEstimate:
    """The per-rank memory model of one training step (module docstring); ``device`` "cpu"
    models CPU ranks, whose host memory is the device."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} must be one of {DEVICES}")
    counts = param_counts(s, qkv_bias)
    states = model_state_bytes(counts, eng)
    acts = activation_bytes(s, act, eng.lp_bytes)
    acts["fwd_transient"] += states.pop("gather_buffer")
    # Backward: the reduce bucket (ZeRO-1/2) and the first (predictor) gradients appear
    # while the encoder's activations are still alive.
    first_grads = eng.lp_bytes * counts.predictor_trainable if eng.zero_stage < 3 else 0.0
    acts["bwd_transient"] += states.pop("bucket") + first_grads
    return MemoryEstimate(**states, **acts, save_host=4.0 * counts.target, device=device)

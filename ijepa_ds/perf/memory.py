"""Per-rank memory model of one I-JEPA training step under DeepSpeed ZeRO 0-3.

Model states (P = trainable student parameters, F = frozen ones (the sin-cos tables),
W = world size, ``lp`` = 2 bytes in bf16 runs and 4 in fp32 runs), as DeepSpeed 0.19.8 lays
them out around a torch AdamW:

| stage | parameters | gradients at the step | fp32 master | Adam moments |
|---|---|---|---|---|
| 0 | lp (P+F) | lp P (bf16: + fp32 copy of one group) | 4P (bf16 only) | 8P |
| 1, 2 | lp (P+F) | lp P/W | 4P/W | 8P/W |
| 3 | lp (P+F)/W | lp P/W (a persistent buffer) | 4P/W | 8P/W |

ZeRO 1-3 keep an fp32 partition of the weights even in fp32 runs. ZeRO-1/2 allocate a reduce
bucket of ``reduce_bucket_size`` elements during backward; ZeRO-3 keeps one. ZeRO-3 keeps the
gathered 16-bit parameters between forward and backward while their reuse distance is below
``stage3_max_reuse_distance`` (default 1e9 elements: all of them for models below 0.5 B
parameters) and gathers through a buffer of up to ``stage3_prefetch_bucket_size``. The step
itself builds the fp32 gradient partition and AdamW temporaries (about 3 x 4P/W). Optimizer
offload moves master, moments and the step's fp32 work to host memory; parameter offload
(ZeRO-3) moves the parameter partition. The EMA target encoder is fp32 outside the engine:
replicated at ZeRO 0-2, 1/W of it at ZeRO-3.

Activations per rank (batch B per rank, ``lp`` bytes; the target runs without grad): per
transformer block and token, autograd saves ``8 D + 2 H`` elements with SDPA (block input,
norm outputs, qkv, attention output, residual, MLP hidden before and after GELU) and
``8 D + 2 H + heads x T`` with eager attention (contiguous q/k/v copies instead of the qkv
buffer, plus the softmax matrix), plus a few fp32 statistics. The patch tokens [B, N, D] are
saved too (by the gather that keeps the context tokens). A block under activation
checkpointing keeps only its input (D per token) and recomputes the rest during backward,
one block at a time. The fp32
target features [B, N, D], the gathered targets and the fp32 prediction stay alive through the
step.

The peak is the largest of three moments: end of forward (activations + loss temporaries),
backward (activations + reduce bucket + recomputed block) and optimizer step (gradients + step
temporaries), each on top of the persistent states. ``bench/plan_validation.py`` checks every
term against real 2-rank runs on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ijepa_ds.perf.flops import StepShape, TransformerShape

GIB = 1024.0**3
# DeepSpeed's defaults (deepspeed/runtime/zero/config.py) for knobs a JSON may leave out.
DS_REDUCE_BUCKET_SIZE = 500_000_000
DS_PREFETCH_BUCKET_SIZE = 50_000_000
DS_MAX_REUSE_DISTANCE = 1_000_000_000
DS_MAX_LIVE_PARAMETERS = 1_000_000_000


@dataclass(frozen=True)
class ParamCounts:
    """Parameter elements of the student and of the target encoder."""

    encoder_trainable: int
    encoder_frozen: int
    predictor_trainable: int
    predictor_frozen: int
    largest_layer: int  # the biggest single Linear/Conv (DeepSpeed's ZeRO-3 estimator input)

    @property
    def trainable(self) -> int:
        return self.encoder_trainable + self.predictor_trainable

    @property
    def frozen(self) -> int:
        return self.encoder_frozen + self.predictor_frozen

    @property
    def target(self) -> int:
        return self.encoder_trainable + self.encoder_frozen


def block_params(t: TransformerShape, qkv_bias: bool = True) -> int:
    """Parameters of one block: two LayerNorms, qkv, proj, fc1, fc2."""
    d, h = t.dim, t.mlp_hidden
    return 4 * d + 3 * d * d + (3 * d if qkv_bias else 0) + d * d + d + 2 * d * h + h + d


def param_counts(s: StepShape, qkv_bias: bool = True) -> ParamCounts:
    """Analytic parameter counts of encoder and predictor (no model is built)."""
    d, p = s.encoder.dim, s.predictor.dim
    embed = s.in_chans * s.patch_size**2 * d + d
    encoder = embed + s.encoder.depth * block_params(s.encoder, qkv_bias) + 2 * d
    predictor = d * p + p + p + s.predictor.depth * block_params(s.predictor, qkv_bias)
    predictor += 2 * p + p * d + d
    largest = max(
        embed,
        d * s.encoder.mlp_hidden + s.encoder.mlp_hidden,
        p * s.predictor.mlp_hidden + s.predictor.mlp_hidden,
        p * d + d,
    )
    return ParamCounts(
        encoder_trainable=encoder,
        encoder_frozen=s.num_patches * d,
        predictor_trainable=predictor,
        predictor_frozen=s.num_patches * p,
        largest_layer=largest,
    )


@dataclass(frozen=True)
class EngineSettings:
    """The DeepSpeed knobs the memory model depends on."""

    zero_stage: int
    world_size: int
    precision: str = "bf16"
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket_size: int = DS_REDUCE_BUCKET_SIZE
    contiguous_gradients: bool = True
    prefetch_bucket_size: int = DS_PREFETCH_BUCKET_SIZE
    max_reuse_distance: int = DS_MAX_REUSE_DISTANCE
    max_live_parameters: int = DS_MAX_LIVE_PARAMETERS

    @property
    def lp_bytes(self) -> int:
        """Bytes per element of the engine's parameters, gradients and activations."""
        return 2 if self.precision == "bf16" else 4

    @classmethod
    def from_ds_config(cls, ds: dict, world_size: int) -> EngineSettings:
        """From a resolved DeepSpeed config (``ijepa_ds.train.ds_config.build_ds_config``)."""
        zero = ds.get("zero_optimization", {})
        return cls(
            zero_stage=int(zero.get("stage", 0)),
            world_size=world_size,
            precision="bf16" if ds.get("bf16", {}).get("enabled") else "fp32",
            # "cpu" or "nvme": either way off the GPU
            offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") != "none",
            offload_param=zero.get("offload_param", {}).get("device", "none") != "none",
            reduce_bucket_size=int(zero.get("reduce_bucket_size", DS_REDUCE_BUCKET_SIZE)),
            contiguous_gradients=bool(zero.get("contiguous_gradients", True)),
            prefetch_bucket_size=int(
                zero.get("stage3_prefetch_bucket_size", DS_PREFETCH_BUCKET_SIZE)
            ),
            max_reuse_distance=int(zero.get("stage3_max_reuse_distance", DS_MAX_REUSE_DISTANCE)),
            max_live_parameters=int(zero.get("stage3_max_live_parameters", DS_MAX_LIVE_PARAMETERS)),
        )


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
        """Modelled live bytes at the end of forward, during backward, at the step."""
        live = self.persistent + self.gathered + self.activations
        return {
            "forward": live + self.fwd_transient,
            "backward": live + self.bwd_transient,
            "step": self.persistent + self.grads_step + self.step_transient,
        }

    @property
    def peak(self) -> float:
        return max(self.phase_peaks().values())

    @property
    def peak_phase(self) -> str:
        peaks = self.phase_peaks()
        return max(peaks, key=peaks.get)

    def as_dict(self) -> dict[str, float]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(persistent=self.persistent, model_states=self.model_states)
        out.update(activations=self.activations, peak=self.peak)
        return out


def model_state_bytes(counts: ParamCounts, eng: EngineSettings) -> dict[str, float]:
    """Model-state terms per rank (module docstring), including the step's temporaries."""
    p, f, w, lp = counts.trainable, counts.frozen, eng.world_size, eng.lp_bytes
    stage = eng.zero_stage
    shard = w if stage >= 1 else 1
    out = dict(
        params=lp * (p + f) / (w if stage == 3 else 1),
        master=4.0 * p / shard if (stage >= 1 or lp == 2) else 0.0,
        moments=8.0 * p / shard,
        target=4.0 * counts.target / (w if stage == 3 else 1),
        grad_buffers=0.0,
        grads_step=lp * p / shard,
        gathered=0.0,
        bucket=float(lp * eng.reduce_bucket_size) if eng.contiguous_gradients else 0.0,
        gather_buffer=0.0,
        step_transient=3 * 4.0 * p / shard,
        host=0.0,
    )
    if stage == 0:
        out["bucket"] = 0.0
        # One group-sized temporary; bf16 also builds that group's fp32 gradients.
        out["step_transient"] = 4.0 * counts.encoder_trainable * (2 if lp == 2 else 1)
    if stage == 3:
        out["grad_buffers"] = lp * p / w + lp * eng.reduce_bucket_size
        out["grads_step"] = out["bucket"] = 0.0
        kept = min(p + f, eng.max_reuse_distance / 2, eng.max_live_parameters)
        out["gathered"] = lp * kept
        out["gather_buffer"] = lp * min(p + f, eng.prefetch_bucket_size)
    if eng.offload_optimizer and stage >= 1:
        out["host"] += out["master"] + out["moments"] + out["step_transient"]
        out["master"] = out["moments"] = out["step_transient"] = 0.0
    if eng.offload_param and stage == 3:
        out["host"] += out["params"]
        out["params"] = 0.0
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
    s: StepShape, eng: EngineSettings, act: ActivationSettings, qkv_bias: bool = True
) -> MemoryEstimate:
    """The per-rank memory model of one training step (module docstring)."""
    counts = param_counts(s, qkv_bias)
    states = model_state_bytes(counts, eng)
    acts = activation_bytes(s, act, eng.lp_bytes)
    acts["fwd_transient"] += states.pop("gather_buffer")
    # Backward: the reduce bucket (ZeRO-1/2) and the first (predictor) gradients appear
    # while the encoder's activations are still alive.
    first_grads = eng.lp_bytes * counts.predictor_trainable if eng.zero_stage < 3 else 0.0
    acts["bwd_transient"] += states.pop("bucket") + first_grads
    return MemoryEstimate(**states, **acts)


def deepspeed_estimate(counts: ParamCounts, eng: EngineSettings) -> float | None:
    """DeepSpeed's own per-GPU model-state estimate (bytes), where its assumptions hold.

    Its estimators assume 16-bit parameters, so they cover bf16 runs at ZeRO-2/3 only, and
    they know nothing of the separate target encoder (not included). None elsewhere.
    """
    if eng.precision != "bf16" or eng.zero_stage not in (2, 3):
        return None
    if eng.zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(
            counts.trainable, num_gpus_per_node=eng.world_size, cpu_offload=eng.offload_optimizer
        )
        return float(gpu)
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        counts.trainable,
        counts.largest_layer,
        num_gpus_per_node=eng.world_size,
        cpu_offload=eng.offload_optimizer,
        cpu_offload_params=eng.offload_param,
    )
    return float(gpu)

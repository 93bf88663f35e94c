"""Per-rank model-state terms of one I-JEPA training step under DeepSpeed ZeRO 0-3.

Model states (P = trainable student parameters, F = frozen ones (the sin-cos tables),
W = world size, ``lp`` = 2 bytes in bf16 runs and 4 in fp32 runs), as DeepSpeed 0.19.8 lays
them out around a torch AdamW:

| stage | parameters | gradients at the step | fp32 master | Adam moments |
|---|---|---|---|---|
| 0 | lp (P+F) | lp P (bf16: + fp32 copy of one group) | 4P (bf16 only) | 8P |
| 1, 2 | lp (P+F) | lp P/W | 4P/W | 8P/W |
| 3 | lp (P+F)/W | lp P/W (a persistent buffer) | 4P/W | 8P/W |

ZeRO 1-3 keep an fp32 partition of the weights even in fp32 runs. ZeRO-1/2 allocate a reduce
bucket of ``reduce_bucket_size`` elements during backward; ZeRO-3 keeps one. ZeRO-3 gathers
through a buffer of up to ``stage3_prefetch_bucket_size`` and, from the second step on (once
its module trace is recorded), keeps gathered 16-bit parameters between forward and backward:
- the parameters whose reuse distance is below ``stage3_max_reuse_distance`` (about half of it
  in elements: those reused soonest; the whole model where its trace is shorter than that);
- with prefetching (``stage3_prefetch_bucket_size`` > 0), up to ``stage3_max_live_parameters``
  elements, whatever the reuse distance. Every submodule's fetch, parameter-free ones
  (Dropout, GELU, Block) included, prefetches one more bucket, that bound is the only one on
  what is available, and a parameter whose later use the prefetcher has already passed is not
  released. Measured at ViT-H/14 on CPU ranks: the whole model, 2 bytes x 653M, stays gathered
  under the shipped 1e9 (bench/results/scale_rehearsal.md).
The larger of the two holds; ``tests/perf/test_zero3_gathered.py`` checks both against a real
engine.

Parameters below ``stage3_param_persistence_threshold`` stay whole on every rank; at the shipped
2048 that is under 1 MiB for ViT-H/G and is not modelled. The step itself builds the fp32
gradient partition and AdamW temporaries (about 3 x 4P/W). Optimizer offload moves master,
moments and the step's fp32 work to host memory; parameter offload (ZeRO-3) moves the parameter
partition. The EMA target encoder is fp32 outside the engine: replicated at ZeRO 0-2, 1/W of it
at ZeRO-3.

Every knob is read from the resolved DeepSpeed config (``EngineSettings.from_ds_config``);
DeepSpeed's own defaults apply where the JSON leaves one out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ijepa_ds.backend.estimates import zero_model_states_estimate
from ijepa_ds.perf.flops import StepShape, TransformerShape

# DeepSpeed's defaults (deepspeed/runtime/zero/config.py) for knobs a JSON may leave out.
DS_REDUCE_BUCKET_SIZE = 500_000_000
DS_PREFETCH_BUCKET_SIZE = 50_000_000
DS_MAX_REUSE_DISTANCE = 1_000_000_000
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
DS_SUB_GROUP_SIZE = 1_000_000_000


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
    sub_group_size: int = DS_SUB_GROUP_SIZE

    @property
    def lp_bytes(self) -> int:
        """Bytes per element of the engine's parameters, gradients and activations."""
        return 2 if self.precision == "bf16" else 4

    @classmethod
    def from_ds_config(cls, ds: dict, world_size: int) -> EngineSettings:
        """From a resolved DeepSpeed config (``ijepa_ds.backend.ds_config.build_ds_config``)."""
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
            sub_group_size=int(zero.get("sub_group_size", DS_SUB_GROUP_SIZE)),
        )


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
        prefetched = eng.max_live_parameters if eng.prefetch_bucket_size > 0 else 0
        kept = min(p + f, max(prefetched, eng.max_reuse_distance / 2))
        out["gathered"] = lp * kept
        out["gather_buffer"] = lp * min(p + f, eng.prefetch_bucket_size)
        # ZeRO-3 steps its fp32 partition one sub-group at a time: the fp32 gradients and
        # AdamW's two temporaries exist for one sub-group only.
        out["step_transient"] = 3 * 4.0 * min(p / w, eng.sub_group_size)
    if eng.offload_optimizer and stage >= 1:
        # The host optimizer steps on fp32 gradients: the partition's whole fp32 gradient
        # copy lives in host memory beside the masters (measured at ViT-H/14 on CPU ranks:
        # +1.2 GiB per rank = 4 bytes x trainable / world; bench/results/scale_rehearsal.md).
        host_grads = 4.0 * p / shard
        out["host"] += out["master"] + out["moments"] + host_grads + out["step_transient"]
        out["master"] = out["moments"] = out["step_transient"] = 0.0
    if eng.offload_param and stage == 3:
        out["host"] += out["params"]
        out["params"] = 0.0
    return out


def deepspeed_estimate(counts: ParamCounts, eng: EngineSettings) -> float | None:
    """DeepSpeed's own per-GPU model-state estimate (bytes), where its assumptions hold.

    Its estimators assume 16-bit parameters, so they cover bf16 runs at ZeRO-2/3 only, and
    they know nothing of the separate target encoder (not included). None elsewhere.
    """
    if eng.precision != "bf16" or eng.zero_stage not in (2, 3):
        return None
    return zero_model_states_estimate(
        eng.zero_stage,
        counts.trainable,
        counts.largest_layer,
        eng.world_size,
        eng.offload_optimizer,
        eng.offload_param,
    )

"""Typed run configuration: one dataclass per section, every field documented.

Each field carries its documentation in ``metadata["help"]`` (shown by ``ijepa-ds config
fields``). Pairs and lists are tuples so a config is immutable-by-convention and hashable.
Choice fields are ``Literal`` types; ``validate_config`` checks them against those literals.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A user-facing configuration error (unknown key, wrong type, broken rule)."""


def _f(default: Any, doc: str) -> Any:
    """Dataclass field with a default and its documentation."""
    return field(default=default, metadata={"help": doc})


def _section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"help": doc})


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Where Debian's dataset-fashion-mnist package installs the IDX files.
DEFAULT_DATA_ROOTS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}


@dataclass
class DataConfig:
    dataset: Literal["fashion_mnist", "image_folder", "synthetic"] = _f(
        "image_folder", "Training data: an ImageFolder tree, Fashion-MNIST IDX files, or noise."
    )
    root: str = _f("", "Dataset location; '' = the dataset's default (fashion_mnist only).")
    crop_size: int = _f(224, "Side of the RandomResizedCrop fed to the model (pixels).")
    crop_scale: tuple[float, float] = _f((0.3, 1.0), "RandomResizedCrop area range (min, max).")
    use_horizontal_flip: bool = _f(False, "Random horizontal flip (off in the paper).")
    use_color_distortion: bool = _f(False, "Random colour jitter/greyscale (off in the paper).")
    color_jitter_strength: float = _f(0.0, "Colour jitter strength s (brightness etc. 0.8 s).")
    use_gaussian_blur: bool = _f(False, "Random Gaussian blur (off in the paper).")
    normalize_mean: tuple[float, ...] = _f(IMAGENET_MEAN, "Per-channel mean; one per in_chans.")
    normalize_std: tuple[float, ...] = _f(IMAGENET_STD, "Per-channel std; one per in_chans.")
    batch_size: int = _f(128, "Per-rank micro-batch (images per forward pass on one rank).")
    global_batch_size: int = _f(
        0, "Images per optimizer step; 0 = batch_size * world_size (no gradient accumulation)."
    )
    num_workers: int = _f(8, "DataLoader worker processes per rank (0 = load in the main one).")
    pin_memory: bool = _f(True, "Pin host memory for faster host-to-GPU copies.")
    persistent_workers: bool = _f(True, "Keep workers alive across epochs (needs workers > 0).")
    prefetch_factor: int = _f(2, "Batches prefetched per worker (used only with workers > 0).")
    synthetic_size: int = _f(1024, "Number of images of the synthetic dataset.")
    synthetic_classes: int = _f(10, "Number of labels of the synthetic dataset.")
    synthetic_load_s: float = _f(
        0.0,
        "Seconds each synthetic image takes to load (a sleep, as from slow storage): a floor on "
        "step time, for loader benchmarks and for jobs that must outlast a time limit.",
    )


@dataclass
class MaskConfig:
    sampler: Literal["step_seeded", "reference"] = _f(
        "step_seeded",
        "Mask sampler: 'step_seeded' draws every mask from (seed, step, sample position), the "
        "same on any world size; 'reference' replays the reference code's sampler, defects "
        "included, for ablations. (Was mask.compat: ijepa_ds -> step_seeded.)",
    )
    num_enc_masks: int = _f(1, "Context blocks per image.")
    num_pred_masks: int = _f(4, "Target blocks per image (M in the paper).")
    enc_mask_scale: tuple[float, float] = _f(
        (0.85, 1.0), "Context block area range, fraction of the patch grid."
    )
    pred_mask_scale: tuple[float, float] = _f(
        (0.15, 0.2), "Target block area range, fraction of the patch grid."
    )
    aspect_ratio: tuple[float, float] = _f((0.75, 1.5), "Target block height/width range.")
    min_keep: int = _f(10, "Fewest patches a context or target mask may hold.")
    allow_overlap: bool = _f(False, "Keep target patches in the context (off in the paper).")
    context_policy: Literal["global_min", "group_min", "keep_all"] = _f(
        "group_min",
        "How context lists get one length per batch: 'global_min' cuts every context to the "
        "shortest of the optimizer step (the behaviour before this field existed); "
        "'group_min' to the shortest of its group of mask.group_size consecutive samples of "
        "the step; 'keep_all' cuts nothing and pads to the micro-batch's longest (padded "
        "tokens are masked out of attention and loss). Masks never depend on the world size. "
        "Ignored by mask.sampler=reference, which cuts every list per micro-batch.",
    )
    group_size: int = _f(
        128,
        "Samples per group for mask.context_policy=group_min (the reference's per-GPU batch "
        "at the paper's scale); must divide the global batch, a larger value means the step.",
    )


@dataclass
class ModelConfig:
    name: Literal["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant"] = _f(
        "vit_base", "Encoder preset; sets embed_dim/depth/num_heads/mlp_ratio left at 0."
    )
    patch_size: int = _f(16, "Patch side in pixels; must divide data.crop_size.")
    in_chans: int = _f(3, "Image channels (3 RGB, 1 grey).")
    embed_dim: int = _f(0, "Encoder width; 0 = from the preset.")
    depth: int = _f(0, "Encoder blocks; 0 = from the preset.")
    num_heads: int = _f(0, "Encoder attention heads; 0 = from the preset.")
    mlp_ratio: float = _f(0.0, "MLP hidden/width ratio; 0 = from the preset (4, ViT-G 48/11).")
    qkv_bias: bool = _f(True, "Bias on the attention qkv projection.")
    drop_path_rate: float = _f(0.0, "Stochastic depth rate of the last block (linear in depth).")
    norm_eps: float = _f(1e-6, "LayerNorm epsilon.")
    init_std: float = _f(0.02, "Std of the truncated-normal init of Linear weights.")
    rescale_init: bool = _f(
        False, "Rescale block output weights by depth (not in effect upstream)."
    )
    attn_impl: Literal["auto", "sdpa", "eager"] = _f(
        "auto",
        "Attention kernel: fused SDPA, eager softmax math, or auto (eager for bf16 activations "
        "on CPU, where it is faster; SDPA otherwise).",
    )
    mask_gather: Literal["index", "copy"] = _f(
        "index", "Token gather: expanded-view index, or the reference's copied index (baseline)."
    )
    context_chunks: int = _f(
        4,
        "Where context masks can be padded (mask.context_policy keep_all, or group_min with "
        "micro-batches spanning groups): sort the micro-batch by context length and run the "
        "encoder and predictor in this many chunks, each padded to its own longest (fewer "
        "padded tokens; under ZeRO-3 each chunk gathers the parameters again). 1 = one "
        "forward padded to the micro-batch's longest.",
    )
    pred_depth: int = _f(6, "Predictor blocks.")
    pred_emb_dim: int = _f(384, "Predictor width.")
    pred_num_heads: int = _f(0, "Predictor attention heads; 0 = the encoder's (as upstream).")
    predictor_prune_last: bool = _f(
        True,
        "Last predictor block computes only the mask-token rows (exact: the context rows' "
        "outputs are discarded); false = the reference's full computation (benchmarks).",
    )
    act_ckpt_encoder: int = _f(0, "Activation checkpointing: 0 off, k = every k-th encoder block.")
    act_ckpt_predictor: int = _f(0, "Activation checkpointing: 0 off, k = every k-th pred. block.")
    act_ckpt_impl: Literal["torch", "deepspeed", "fairscale"] = _f(
        "torch",
        "Checkpointing implementation: torch non-reentrant, deepspeed.checkpointing, or "
        "fairscale's checkpoint_wrapper (needs the package: pip install .[fairscale]).",
    )
    act_ckpt_cpu_offload: bool = _f(
        False,
        "Keep each checkpointed block's input in host memory until the backward (every "
        "act_ckpt_impl; deepspeed's needs a GPU). Needs act_ckpt_encoder or act_ckpt_predictor.",
    )


@dataclass
class OptimConfig:
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW (beta1, beta2).")
    eps: float = _f(1e-8, "AdamW epsilon.")
    gradient_clipping: float = _f(0.0, "Max global grad norm; 0 = no clipping (as upstream).")
    precision: Literal["bf16", "fp32"] = _f("bf16", "Training precision of the engine.")


@dataclass
class ScheduleConfig:
    epochs: int = _f(300, "Epochs; the lr/wd/EMA schedules span epochs * iterations per epoch.")
    warmup_epochs: float = _f(40.0, "Linear lr warmup from start_lr to lr (may be fractional).")
    start_lr: float = _f(2e-4, "Learning rate at step 0.")
    lr: float = _f(1e-3, "Peak learning rate, reached at the end of warmup.")
    final_lr: float = _f(1e-6, "Learning rate at the end of the cosine decay.")
    weight_decay: float = _f(0.04, "Weight decay at step 0 (cosine schedule).")
    final_weight_decay: float = _f(0.4, "Weight decay at the end of the cosine schedule.")
    ipe_scale: float = _f(1.0, "Stretch factor of the schedule length (as upstream).")
    max_steps: int = _f(0, "Stop after this many optimizer steps; 0 = run all epochs.")


@dataclass
class EMAConfig:
    momentum_start: float = _f(0.996, "Target-encoder EMA momentum at step 0.")
    momentum_end: float = _f(1.0, "EMA momentum at the end (linear over the whole run).")


@dataclass
class LossConfig:
    kind: Literal["smooth_l1", "l2"] = _f("smooth_l1", "Distance: smooth L1 (upstream) or L2.")
    on_nonfinite: Literal["stop", "skip"] = _f(
        "stop", "Non-finite loss: stop with an error, or skip the step."
    )


@dataclass
class LoggingConfig:
    output_dir: str = _f("runs", "Parent folder of run folders.")
    run_name: str = _f("", "Run folder name; '' = preset name + start time.")
    log_every: int = _f(10, "Optimizer steps between progress lines/scalars.")
    tensorboard: bool = _f(True, "Write TensorBoard event files.")
    image_every: int = _f(0, "Steps between mask-overlay images; 0 = off.")
    jsonl: bool = _f(True, "Write metrics as JSON lines.")
    wandb: bool = _f(
        False, "Also log scalars, images and the config to Weights & Biases (rank 0; needs wandb)."
    )
    wandb_project: str = _f("ijepa-ds", "W&B project of the run.")
    wandb_entity: str = _f("", "W&B entity (user or team); '' = the API key's default entity.")
    wandb_mode: Literal["online", "offline", "disabled"] = _f(
        "online", "W&B mode: online, offline (files under <run>/wandb/; wandb sync), disabled."
    )
    wandb_tags: tuple[str, ...] = _f((), "W&B run tags, e.g. [baseline,vit_tiny].")


@dataclass
class CheckpointConfig:
    every_steps: int = _f(0, "Save every N optimizer steps; 0 = off.")
    every_minutes: float = _f(0.0, "Save every N minutes of wall time; 0 = off.")
    keep_last: int = _f(2, "Rolling checkpoints kept (milestones are never deleted).")
    milestone_every: int = _f(0, "Keep a permanent checkpoint every N optimizer steps; 0 = off.")
    save_at_end: bool = _f(True, "Save when training ends.")


@dataclass
class DeepSpeedConfig:
    config: str = _f("zero1", "Engine JSON: a name in ds_configs/ (e.g. zero1) or a path.")
    zero_stage: int = _f(-1, "ZeRO stage 0..3; -1 = take it from the JSON.")
    offload_optimizer: bool = _f(False, "Offload optimizer state to CPU (ZeRO >= 1).")
    offload_param: bool = _f(False, "Offload parameters to CPU (ZeRO-3 only).")


@dataclass
class EvalConfig:
    knn_k: int = _f(20, "Neighbours of the k-NN classifier.")
    knn_temperature: float = _f(0.07, "Temperature of the k-NN vote weights.")
    linear_lrs: tuple[float, ...] = _f((1e-3, 1e-2, 1e-1), "Linear-probe learning rates swept.")
    linear_wds: tuple[float, ...] = _f((0.0, 5e-4), "Linear-probe weight decays swept.")
    linear_epochs: int = _f(10, "Linear-probe training epochs.")
    feature_pool: Literal["avg", "last4", "grid2"] = _f(
        "avg",
        "Features: patch average of the last layer, concat of the last 4 layers' averages, or "
        "the last layer averaged over each 2x2 quarter of the patch grid.",
    )
    batch_size: int = _f(256, "Feature-extraction batch size per rank.")
    val_every_epochs: int = _f(1, "Linear-probe epochs between validations; 0 = only at the end.")
    low_shot_fractions: tuple[float, ...] = _f(
        (0.01, 0.1), "Fractions of the labelled train set for low-shot probes."
    )
    pretrain_val_every_epochs: int = _f(
        1, "During pretraining: JEPA loss on the held-out split every N epochs (0 = off)."
    )
    pretrain_val_samples: int = _f(
        1024, "Held-out images for the pretraining validation loss (masks fixed by seed)."
    )
    health_every_steps: int = _f(
        0, "During pretraining: kNN accuracy, RankMe and feature std every N steps (0 = off)."
    )
    health_train_samples: int = _f(2048, "Labelled train images of the online kNN check.")
    health_val_samples: int = _f(1024, "Held-out images of the online kNN check.")
    collapse_std_threshold: float = _f(
        1e-3, "Warn that features collapsed when their std across images falls below this."
    )
    best_metric: Literal["val_loss", "knn"] = _f(
        "val_loss",
        "What checkpoints/best tracks: the lowest held-out JEPA loss, or the highest online kNN "
        "top-1 (needs health_every_steps). The loss favours early epochs as the EMA target "
        "sharpens, so kNN is the better pick when labels exist.",
    )


@dataclass
class Config:
    seed: int = _f(0, "Global seed (model init, data order, masks).")
    data: DataConfig = _section(DataConfig, "Dataset, augmentation and batching.")
    mask: MaskConfig = _section(MaskConfig, "Context/target block sampling.")
    model: ModelConfig = _section(ModelConfig, "Encoder and predictor architecture.")
    optim: OptimConfig = _section(OptimConfig, "AdamW and precision.")
    schedule: ScheduleConfig = _section(ScheduleConfig, "Epochs, lr and weight-decay schedules.")
    ema: EMAConfig = _section(EMAConfig, "Target-encoder EMA.")
    loss: LossConfig = _section(LossConfig, "Prediction loss.")
    logging: LoggingConfig = _section(LoggingConfig, "Run folder and logging.")
    checkpoint: CheckpointConfig = _section(CheckpointConfig, "Checkpoint cadence and retention.")
    deepspeed: DeepSpeedConfig = _section(DeepSpeedConfig, "DeepSpeed engine options.")
    eval: EvalConfig = _section(EvalConfig, "k-NN and linear-probe evaluation.")


# Encoder presets: (embed_dim, depth, num_heads, mlp_ratio), the paper's ViT sizes.
ENCODER_DIMS: dict[str, tuple[int, int, int, float]] = {
    "vit_tiny": (192, 12, 3, 4.0),
    "vit_small": (384, 12, 6, 4.0),
    "vit_base": (768, 12, 12, 4.0),
    "vit_large": (1024, 24, 16, 4.0),
    "vit_huge": (1280, 32, 16, 4.0),
    "vit_giant": (1408, 40, 16, 48 / 11),
}


@dataclass(frozen=True)
class ModelDims:
    """Architecture numbers after resolving the 0 = "from preset" fields."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    pred_num_heads: int


def resolve_model_dims(model: ModelConfig) -> ModelDims:
    """Encoder/predictor dims with preset defaults filled in.

    Raises ConfigError for an unknown preset name (validate_config reports it too).
    """
    if model.name not in ENCODER_DIMS:
        raise ConfigError(
            f"model.name={model.name!r}: unknown encoder preset; one of {sorted(ENCODER_DIMS)}"
        )
    dim, depth, heads, ratio = ENCODER_DIMS[model.name]
    num_heads = model.num_heads or heads
    return ModelDims(
        embed_dim=model.embed_dim or dim,
        depth=model.depth or depth,
        num_heads=num_heads,
        mlp_ratio=model.mlp_ratio or ratio,
        pred_num_heads=model.pred_num_heads or num_heads,
    )


def resolve_data_root(data: DataConfig) -> str:
    """The dataset folder: `data.root`, or the dataset's default when it is ''."""
    return data.root or DEFAULT_DATA_ROOTS.get(data.dataset, "")


@dataclass(frozen=True)
class FieldInfo:
    """One leaf field of the config tree."""

    path: str
    type: Any
    default: Any
    help: str


def iter_fields(cls: type = Config, prefix: str = "") -> Iterator[FieldInfo]:
    """Every leaf field (dotted path, resolved type, default, help), in schema order."""
    hints = typing.get_type_hints(cls)
    default_obj = cls()
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        ftype = hints[f.name]
        if dataclasses.is_dataclass(ftype):
            yield from iter_fields(ftype, path + ".")
        else:
            yield FieldInfo(path, ftype, getattr(default_obj, f.name), f.metadata.get("help", ""))

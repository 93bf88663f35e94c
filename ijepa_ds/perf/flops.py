"""Analytic FLOP model of one I-JEPA training step, and model FLOPs utilisation (MFU).

Counted: every matmul (patch embedding, qkv, attention output projection, MLP, predictor
embedding and projection) at 2 FLOPs per multiply-add, and the two attention products
(q k^T and attn v, 4 T^2 D per sequence and block). Layer norms, softmax, GELU, residual adds
and the loss are left out, as in the usual MFU convention (they are <2% of the FLOPs of a ViT).
Backward costs twice the forward, except for the patch embedding of the context encoder,
whose input (the image) needs no gradient: only its weight gradient is computed (1x).

One step per image is
- context encoder: forward + backward on ``k_enc`` tokens (x ``nenc`` context views); its
  patch embedding runs on all N patches, because masking happens after it;
- target encoder: forward only, on all N tokens;
- predictor: forward + backward on ``k_enc + k_pred`` tokens, once per (target block, context
  view) pair, i.e. ``npred * nenc`` sequences; with ``prune_last`` (the trainer's default,
  ``model.predictor_prune_last``) the last block runs its output projection, MLP and attention
  rows for the ``k_pred`` mask-token rows only (qkv still on all rows).
Activation checkpointing recomputes the forward of the checkpointed blocks during backward:
``StepFlops.recompute`` counts that work (hardware FLOPs); MFU uses model FLOPs without it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ijepa_ds.models.predictor import PREDICTOR_MLP_RATIO


@dataclass(frozen=True)
class TransformerShape:
    """One stack of pre-norm transformer blocks: width, depth, MLP hidden width, heads."""

    dim: int
    depth: int
    mlp_hidden: int
    num_heads: int


@dataclass(frozen=True)
class StepShape:
    """Everything the FLOP and memory models need about one I-JEPA step.

    ``k_enc``/``k_pred`` are the tokens per context / target mask (means over steps when the
    masks vary); ``num_patches`` is N = (crop / patch)^2.
    """

    encoder: TransformerShape
    predictor: TransformerShape
    in_chans: int
    patch_size: int
    num_patches: int
    k_enc: float
    k_pred: float
    nenc: int = 1
    npred: int = 4
    prune_last: bool = False


def linear_flops(tokens: float, d_in: int, d_out: int) -> float:
    """Forward FLOPs of ``[tokens, d_in] @ [d_in, d_out]``."""
    return 2.0 * tokens * d_in * d_out


def block_matmul_flops(tokens: float, dim: int, mlp_hidden: int) -> float:
    """Forward FLOPs of the weight matmuls of one block on ``tokens`` tokens (qkv, proj, MLP)."""
    return (
        linear_flops(tokens, dim, 3 * dim)
        + linear_flops(tokens, dim, dim)
        + (2 * linear_flops(tokens, dim, mlp_hidden))
    )


def attention_flops(seq_len: float, dim: int) -> float:
    """Forward FLOPs of q k^T and attn v for one sequence of ``seq_len`` tokens (all heads)."""
    return 4.0 * seq_len * seq_len * dim


def stack_forward_flops(shape: TransformerShape, seq_len: float, sequences: float) -> float:
    """Forward FLOPs of all blocks of ``shape`` on ``sequences`` sequences of ``seq_len``."""
    per_seq = block_matmul_flops(seq_len, shape.dim, shape.mlp_hidden) + attention_flops(
        seq_len, shape.dim
    )
    return shape.depth * sequences * per_seq


def patch_embed_flops(s: StepShape) -> float:
    """Forward FLOPs of the patch-embedding convolution on one image (all N patches)."""
    return linear_flops(s.num_patches, s.in_chans * s.patch_size**2, s.encoder.dim)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per image of one training step, by part (see the module docstring)."""

    context_fwd: float
    context_bwd: float
    target_fwd: float
    predictor_fwd: float
    predictor_bwd: float
    recompute: float = 0.0

    @property
    def model(self) -> float:
        """Model FLOPs per image (what MFU divides by): no activation recomputation."""
        return (
            self.context_fwd
            + self.context_bwd
            + self.target_fwd
            + self.predictor_fwd
            + self.predictor_bwd
        )

    @property
    def hardware(self) -> float:
        """FLOPs actually executed per image, recomputation included."""
        return self.model + self.recompute

    def as_dict(self) -> dict[str, float]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(model=self.model, hardware=self.hardware)
        return out


def context_forward_flops(s: StepShape) -> tuple[float, float]:
    """(patch embedding, blocks) forward FLOPs of the context encoder per image."""
    blocks = stack_forward_flops(s.encoder, s.k_enc, s.nenc)
    return patch_embed_flops(s), blocks


def pruned_last_block_saving(s: StepShape) -> float:
    """Forward FLOPs per image the pruned last predictor block skips (0 without pruning).

    Per sequence, the k_enc context rows get no output projection, no MLP and no attention row
    (q k^T and attn v over T = k_enc + k_pred keys); their q still comes from the qkv matmul.
    """
    if not s.prune_last or s.predictor.depth == 0:
        return 0.0
    width, seq_len = s.predictor.dim, s.k_enc + s.k_pred
    per_seq = (
        linear_flops(s.k_enc, width, width)
        + 2 * linear_flops(s.k_enc, width, s.predictor.mlp_hidden)
        + 4.0 * s.k_enc * seq_len * width
    )
    return per_seq * s.nenc * s.npred


def predictor_blocks_forward_flops(s: StepShape) -> float:
    """Forward FLOPs per image of the predictor's blocks (pruning of the last one included)."""
    seqs = s.nenc * s.npred
    full = stack_forward_flops(s.predictor, s.k_enc + s.k_pred, seqs)
    return full - pruned_last_block_saving(s)


def predictor_forward_flops(s: StepShape) -> float:
    """Predictor forward FLOPs per image: embed the context, run the blocks, project targets."""
    seqs = s.nenc * s.npred
    embed = s.nenc * linear_flops(s.k_enc, s.encoder.dim, s.predictor.dim)
    proj = seqs * linear_flops(s.k_pred, s.predictor.dim, s.encoder.dim)
    return embed + predictor_blocks_forward_flops(s) + proj


def _recompute_fraction(depth: int, every: int) -> float:
    """Share of a stack's blocks that activation checkpointing (every k-th block) recomputes."""
    if every <= 0:
        return 0.0
    return len(range(0, depth, every)) / depth


def step_flops(s: StepShape, act_ckpt_encoder: int = 0, act_ckpt_predictor: int = 0) -> StepFlops:
    """FLOPs per image of one I-JEPA training step for ``s`` (see the module docstring)."""
    embed, enc_blocks = context_forward_flops(s)
    pred_fwd = predictor_forward_flops(s)
    pred_blocks = stack_forward_flops(s.predictor, s.k_enc + s.k_pred, s.nenc * s.npred)
    recompute = enc_blocks * _recompute_fraction(s.encoder.depth, act_ckpt_encoder)
    recompute += pred_blocks * _recompute_fraction(s.predictor.depth, act_ckpt_predictor)
    if act_ckpt_predictor > 0 and (s.predictor.depth - 1) % act_ckpt_predictor == 0:
        recompute -= pruned_last_block_saving(s)  # the checkpointed last block is pruned too
    target = patch_embed_flops(s) + stack_forward_flops(s.encoder, s.num_patches, 1)
    return StepFlops(
        context_fwd=embed + enc_blocks,
        context_bwd=embed + 2.0 * enc_blocks,
        target_fwd=target,
        predictor_fwd=pred_fwd,
        predictor_bwd=2.0 * pred_fwd,
        recompute=recompute,
    )


def mfu(img_per_s: float, flops_per_img: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (``img_per_s * flops_per_img``) / peak FLOP/s.

    All three numbers must refer to the same devices: per-rank throughput with one device's
    peak, or the whole job's throughput with the sum of the peaks.
    """
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0, got {peak_flops}")
    return img_per_s * flops_per_img / peak_flops


def shape_from_config(cfg, k_enc: float, k_pred: float) -> StepShape:
    """The StepShape of an ``ijepa_ds.config.Config`` with the given tokens per mask."""
    from ijepa_ds.config import resolve_model_dims

    dims = resolve_model_dims(cfg.model)
    model = cfg.model
    grid = cfg.data.crop_size // model.patch_size
    return StepShape(
        encoder=TransformerShape(
            dims.embed_dim, dims.depth, int(dims.embed_dim * dims.mlp_ratio), dims.num_heads
        ),
        predictor=TransformerShape(
            model.pred_emb_dim,
            model.pred_depth,
            int(model.pred_emb_dim * PREDICTOR_MLP_RATIO),
            dims.pred_num_heads,
        ),
        in_chans=model.in_chans,
        patch_size=model.patch_size,
        num_patches=grid * grid,
        k_enc=k_enc,
        k_pred=k_pred,
        nenc=cfg.mask.num_enc_masks,
        npred=cfg.mask.num_pred_masks,
        prune_last=model.predictor_prune_last,
    )

"""ViT building blocks with the reference module names (so state-dict keys match).

Every block maps one tensor to one tensor (plus an optional int, `query_from`, and an optional
bool key-padding mask, `key_mask`), so activation checkpointing can wrap it as is.
"""

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTN_IMPLS = ("auto", "sdpa", "eager")

log = logging.getLogger(__name__)
# (device type, dtype, kernel) choices of "auto" already logged: one line per process each.
_LOGGED_AUTO: set[tuple[str, torch.dtype, str]] = set()


def check_attn_impl(attn_impl: str) -> str:
    """Return attn_impl if it names a known attention kernel, else raise ValueError."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"unknown attn_impl {attn_impl!r}; expected one of {ATTN_IMPLS}")
    return attn_impl


def resolve_attn_impl(attn_impl: str, device_type: str, dtype: torch.dtype) -> str:
    """The kernel ("sdpa" or "eager") that attn_impl means for activations of dtype on device_type.

    "auto" is eager softmax attention for bf16 on CPU, where torch's CPU SDPA kernel is slower
    than two bf16 GEMMs and a softmax (bench/results/fast_paths.md), and SDPA otherwise (flash /
    memory-efficient kernels on GPU, neutral in fp32 on CPU). Deciding from the activations
    rather than from the config means the bf16 DeepSpeed student and the fp32 target under bf16
    autocast (whose q, k, v come out of the qkv Linear in bf16) both get the right kernel.
    """
    if check_attn_impl(attn_impl) != "auto":
        return attn_impl
    kernel = "eager" if device_type == "cpu" and dtype == torch.bfloat16 else "sdpa"
    if (device_type, dtype, kernel) not in _LOGGED_AUTO:
        _LOGGED_AUTO.add((device_type, dtype, kernel))
        log.info(
            "attn_impl=auto: %s attention for %s activations on %s", kernel, dtype, device_type
        )
    return kernel


def _check_query_from(query_from: int | None, tokens: int) -> int:
    """query_from as a row index in [0, tokens); None means 0 (every row)."""
    if query_from is None:
        return 0
    if not 0 <= query_from < tokens:
        raise ValueError(f"query_from={query_from} must lie in [0, {tokens}) for {tokens} tokens")
    return query_from


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch, rescale the survivors.

    x: [B, ...]; each sample is kept with probability 1 - drop_prob and then divided by it,
    so the expectation is unchanged. Identity when not training or drop_prob is 0.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Module form of `drop_path` (no parameters, so no state-dict keys)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided convolution (`proj`)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] with H, W multiples of patch_size -> [B, H/p * W/p, D], raster order."""
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            # The convolution would silently drop the border; refuse instead.
            raise ValueError(
                f"image size {height}x{width} is not a multiple of patch_size={self.patch_size}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection and an output `proj`.

    attn_impl "sdpa" calls torch's scaled_dot_product_attention (flash / memory-efficient
    kernels on GPU); "eager" is the reference's explicit softmax(q k^T * scale) v (faster for
    bf16 on CPU, and the reference-style baseline of the benchmarks); "auto" picks one per call
    (`resolve_attn_impl`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_impl = check_attn_impl(attn_impl)
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        query_from: int | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, N, D] -> [B, N - query_from, D], the outputs of rows query_from.. only.

        Every row is still a key and a value; only rows query_from.. attend and get the output
        projection. query_from=None (or 0) gives all N rows. key_mask: bool [B, N], False for
        padded rows, which then serve as no key (their own outputs are meaningless); None
        attends to every row, with no mask op at all.
        """
        batch, tokens, dim = x.shape
        start = _check_query_from(query_from, tokens)
        # One qkv call on all rows (not a q-only matmul on the kept rows): ZeRO-3 gathers the
        # qkv weight only when the qkv module itself runs.
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        q = q[:, :, start:]
        dropout = self.attn_drop if self.training else 0.0
        keys = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, N]
        if resolve_attn_impl(self.attn_impl, q.device.type, q.dtype) == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=dropout)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            if keys is not None:
                attn = attn.masked_fill(~keys, float("-inf"))
            attn = F.dropout(attn.softmax(dim=-1), p=dropout)
            out = attn @ v
        out = out.transpose(1, 2).reshape(batch, tokens - start, dim)
        return self.proj_drop(self.proj(out))


class MLP(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (the reference `Mlp`)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, attn_impl)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        # int() as in the reference: ViT-G's 1408 * 48/11 gives 6144.
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop)

    def forward(
        self,
        x: torch.Tensor,
        query_from: int | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, N, D] -> [B, N - query_from, D] (all N rows when query_from is None).

        With query_from, rows before it serve only as keys and values: their residual, MLP and
        output are skipped. This is exact, not an approximation, for a caller that would
        discard those rows (the predictor's last block keeps only its mask-token rows).
        key_mask: bool [B, N] or None, see Attention.forward; every other op is row-wise, so
        padded rows change no real row.
        """
        out = self.attn(self.norm1(x), query_from, key_mask)
        if query_from:
            x = x[:, query_from:]
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def build_blocks(depth: int, drop_path_rate: float, **block_kwargs: Any) -> nn.ModuleList:
    """`depth` Blocks from block_kwargs; drop-path rate rising linearly 0 -> drop_path_rate."""
    # device="cpu": the rates are plain floats even when building on the meta device.
    rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
    return nn.ModuleList(Block(drop_path=rate, **block_kwargs) for rate in rates)


def apply_attn_impl(module: nn.Module, attn_impl: str) -> None:
    """Switch every Attention inside `module` to attn_impl ("auto", "sdpa", "eager") in place."""
    check_attn_impl(attn_impl)
    for m in module.modules():
        if isinstance(m, Attention):
            m.attn_impl = attn_impl

"""Fixed 2D sin-cos position embeddings (no [cls] token) and their adaptation to other grids.

Layout, identical to the reference tables stored in its checkpoints: tokens in raster order
(row-major over a [grid_h, grid_w] patch grid); the first half of the channels encodes the
column index, the second half the row index (the reference builds its grid with
`np.meshgrid(grid_w, grid_h)`). Each half is a 1D table: sin in its first half, cos in its
second, frequencies 1 / 10000^(2i / half_dim).
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F

GridSize = int | tuple[int, int]
POS_INTERP_MODES = ("sincos", "bicubic")


def to_grid(grid: GridSize) -> tuple[int, int]:
    """Normalise an int (square grid) or (grid_h, grid_w) to a (grid_h, grid_w) tuple."""
    if isinstance(grid, int):
        return grid, grid
    grid_h, grid_w = grid
    return int(grid_h), int(grid_w)


def get_1d_sincos_pos_embed(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos table for 1D positions.

    Args:
        embed_dim: even output width D.
        positions: [M] positions (any float or integer dtype).

    Returns:
        [M, D] float64: [sin(p * w_i) for i < D/2] followed by [cos(p * w_i) for i < D/2] with
        w_i = 1 / 10000^(i / (D/2)).
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"sin-cos embedding width must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid: GridSize) -> torch.Tensor:
    """Fixed 2D sin-cos table for a patch grid, laid out as the reference stores it.

    Args:
        embed_dim: width D, a multiple of 4.
        grid: side of a square grid, or (grid_h, grid_w).

    Returns:
        [grid_h * grid_w, D] float32; row r * grid_w + c holds
        concat(1d(D/2, c), 1d(D/2, r)).
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"2D sin-cos embedding width must be a multiple of 4, got {embed_dim}")
    grid_h, grid_w = to_grid(grid)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    emb_cols = get_1d_sincos_pos_embed(embed_dim // 2, cols)
    emb_rows = get_1d_sincos_pos_embed(embed_dim // 2, rows)
    return torch.cat([emb_cols, emb_rows], dim=1).float()


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: GridSize, new_grid: GridSize
) -> torch.Tensor:
    """Bicubic resize of a stored table to another grid; every token is a patch (no [cls]).

    Unlike the reference `interpolate_pos_encoding`, no leading token is set aside, so the
    top-left patch position is kept and the output has exactly grid_h * grid_w tokens.

    Args:
        pos_embed: [1, old_h * old_w, D] table in raster order.
        old_grid: grid the table was built for.
        new_grid: target grid.

    Returns:
        [1, new_h * new_w, D] in pos_embed's dtype (the input itself at the same grid).
    """
    old_h, old_w = to_grid(old_grid)
    new_h, new_w = to_grid(new_grid)
    _, num_tokens, dim = pos_embed.shape
    if num_tokens != old_h * old_w:
        raise ValueError(
            f"table has {num_tokens} tokens, grid {old_h}x{old_w} needs {old_h * old_w}"
        )
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed
    table = pos_embed.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=(new_h, new_w), mode="bicubic", align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)


def pos_embed_for_grid(
    pos_embed: torch.Tensor, old_grid: GridSize, new_grid: GridSize, mode: str = "sincos"
) -> torch.Tensor:
    """Position table for `new_grid` from a stored [1, N, D] table built for `old_grid`.

    mode "sincos" regenerates the fixed table at the new grid (exact: the stored table is
    itself the fixed sin-cos table, so integer patch positions keep their meaning);
    "bicubic" resizes the stored table (keeps the range of positions seen in training).

    Returns:
        [1, new_h * new_w, D] on pos_embed's device and dtype.
    """
    if mode not in POS_INTERP_MODES:
        raise ValueError(f"unknown pos_interp mode {mode!r}; expected one of {POS_INTERP_MODES}")
    if to_grid(old_grid) == to_grid(new_grid):
        return pos_embed
    if mode == "bicubic":
        return resize_pos_embed(pos_embed, old_grid, new_grid)
    table = get_2d_sincos_pos_embed(pos_embed.shape[-1], new_grid)
    return table.unsqueeze(0).to(device=pos_embed.device, dtype=pos_embed.dtype)


def adapt_pos_embed(
    state_dict: Mapping[str, torch.Tensor],
    new_grid: GridSize,
    key: str = "pos_embed",
    old_grid: GridSize | None = None,
    mode: str = "sincos",
) -> dict[str, torch.Tensor]:
    """Copy of a loaded state dict whose position table `key` fits a model with `new_grid`.

    Args:
        state_dict: encoder (key "pos_embed") or predictor (key "predictor_pos_embed") weights.
        new_grid: patch grid of the model that will load the result.
        key: name of the [1, N, D] table.
        old_grid: grid of the stored table; a square grid is inferred from N when omitted.
        mode: "sincos" or "bicubic", see `pos_embed_for_grid`.
    """
    if key not in state_dict:
        raise KeyError(f"state dict has no position table {key!r}")
    table = state_dict[key]
    if old_grid is None:
        side = round(table.shape[1] ** 0.5)
        if side * side != table.shape[1]:
            raise ValueError(f"{key} has {table.shape[1]} tokens: not square, pass old_grid")
        old_grid = side
    adapted = dict(state_dict)
    adapted[key] = pos_embed_for_grid(table, old_grid, new_grid, mode=mode)
    return adapted

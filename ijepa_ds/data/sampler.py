"""The run-wide sample-position stream and its split across ranks and micro-steps.

Training consumes global sample positions ``p = 0, 1, 2, ...`` as one continuous stream across
epochs. With ``N`` the dataset size, ``G`` the global batch per optimizer step, ``b`` the per-rank
micro-batch, ``W`` the world size, ``A = G // (b * W)`` accumulation micro-steps and
``I = N // G`` optimizer steps per epoch (the tail ``N - I * G`` of each epoch is dropped):

- epoch ``e = p // (I * G)``, within-epoch offset ``o = p % (I * G)``; the dataset index of ``p``
  is ``perm_e[o]``, where ``perm_e = torch.randperm(N, generator=g)`` and ``g`` is a CPU
  ``torch.Generator`` seeded with ``mix_seed(seed, PERMUTATION_TAG, e)``. Every rank computes
  the same permutation, so no index is seen twice in an epoch whatever the world size.
- optimizer step ``s = p // G`` covers positions ``[s * G, (s + 1) * G)``; micro-step ``m``
  (``0 <= m < A``) of rank ``r`` gets positions ``s * G + (m * W + r) * b + [0, b)``.

Because positions, not indices, are what the sampler hands out, the stream can restart at any
optimizer step (mid-epoch included) and can be re-sharded to another ``(W, b)`` with the same
``G``: each optimizer step still sees the same set of samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

_MASK64 = (1 << 64) - 1
PERMUTATION_TAG = 0x5045524D  # ASCII "PERM": keeps epoch seeds apart from other seed streams.


def _splitmix64(x: int) -> int:
    """One round of the splitmix64 finaliser: a bijective 64-bit mix with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """Hash a sequence of integers into a seed in ``[0, 2**63)`` for ``torch.manual_seed``.

    ``h_0 = 0`` and ``h_{k+1} = splitmix64(h_k ^ (v_k mod 2**64))``; the result is
    ``h_n >> 1``. Plain sums such as ``seed + epoch`` would make (seed 1, epoch 0) and
    (seed 0, epoch 1) share a stream; chaining the mix keeps every tuple distinct in practice.
    """
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def epoch_permutation(dataset_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation ``perm_e`` of ``range(dataset_size)`` for ``epoch``: int64 ``[N]``."""
    generator = torch.Generator().manual_seed(mix_seed(seed, PERMUTATION_TAG, epoch))
    return torch.randperm(dataset_size, generator=generator)


class PositionMap:
    """Maps global sample positions to dataset indices (see the module docstring).

    Keeps the two most recently used epoch permutations: positions arrive in order, so at most
    the current and the next epoch are live near an epoch boundary.
    """

    def __init__(self, dataset_size: int, global_batch_size: int, seed: int) -> None:
        if global_batch_size <= 0:
            raise ValueError(f"data.global_batch_size must be positive, got {global_batch_size}")
        if dataset_size < global_batch_size:
            raise ValueError(
                f"the dataset has {dataset_size} samples, fewer than data.global_batch_size "
                f"({global_batch_size}): no full optimizer step fits in one epoch"
            )
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.iterations_per_epoch = dataset_size // global_batch_size
        self.samples_per_epoch = self.iterations_per_epoch * global_batch_size
        self._cache: dict[int, torch.Tensor] = {}

    def epoch_of_position(self, position: int) -> int:
        """Epoch that consumes ``position``."""
        return position // self.samples_per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """``perm_e`` for ``epoch``, int64 ``[N]``, cached."""
        perm = self._cache.get(epoch)
        if perm is None:
            perm = epoch_permutation(self.dataset_size, self.seed, epoch)
            if len(self._cache) >= 2:
                self._cache.pop(max(self._cache, key=lambda e: abs(e - epoch)))
            self._cache[epoch] = perm
        return perm

    def index_of(self, position: int) -> int:
        """Dataset index of global sample ``position``."""
        if position < 0:
            raise ValueError(f"sample positions are non-negative, got {position}")
        epoch, offset = divmod(position, self.samples_per_epoch)
        return int(self.permutation(epoch)[offset])


class GlobalPositionSampler:
    """Batch sampler over global positions: yields this rank's micro-batches in order.

    Each item is a list of ``b`` positions (``s * G + (m * W + r) * b + [0, b)`` for optimizer
    step ``s`` and micro-step ``m``); for each step the ``A`` micro-batches come in order of
    ``m``. The stream starts at optimizer step ``start_step`` (which may fall mid-epoch) and
    runs through the epochs without a break. ``max_steps`` is the absolute step at which the
    stream ends (exclusive), so a resumed run with the same ``max_steps`` gets exactly the tail
    of the uninterrupted stream; ``None`` streams forever.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch_size: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        start_step: int = 0,
        max_steps: int | None = None,
    ) -> None:
        _validate(global_batch_size, micro_batch_size, rank, world_size, start_step, max_steps)
        self.position_map = PositionMap(dataset_size, global_batch_size, seed)
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self.accumulation_steps = global_batch_size // (micro_batch_size * world_size)
        self.iterations_per_epoch = self.position_map.iterations_per_epoch

    def epoch_of(self, step: int) -> int:
        """Epoch of optimizer step ``step``."""
        return step // self.iterations_per_epoch

    def micro_batch_positions(self, step: int, micro_step: int) -> list[int]:
        """The ``b`` positions of this rank for ``(step, micro_step)``."""
        start = (
            step * self.global_batch_size
            + (micro_step * self.world_size + self.rank) * self.micro_batch_size
        )
        return list(range(start, start + self.micro_batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            for micro_step in range(self.accumulation_steps):
                yield self.micro_batch_positions(step, micro_step)
            step += 1

    def __len__(self) -> int:
        """Number of micro-batches this rank yields; ``TypeError`` for an endless stream."""
        if self.max_steps is None:
            raise TypeError("GlobalPositionSampler with max_steps=None has no length")
        return (self.max_steps - self.start_step) * self.accumulation_steps


def _validate(
    global_batch_size: int,
    micro_batch_size: int,
    rank: int,
    world_size: int,
    start_step: int,
    max_steps: int | None,
) -> None:
    """Check the batch split and the step range; messages name the config fields."""
    if micro_batch_size <= 0 or world_size <= 0 or global_batch_size <= 0:
        raise ValueError(
            f"data.global_batch_size ({global_batch_size}), data.batch_size ({micro_batch_size}) "
            f"and the world size ({world_size}) must all be positive"
        )
    if global_batch_size % (micro_batch_size * world_size) != 0:
        raise ValueError(
            f"data.global_batch_size ({global_batch_size}) must be a multiple of "
            f"data.batch_size ({micro_batch_size}) x world size ({world_size}) = "
            f"{micro_batch_size * world_size}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world size {world_size})")
    if start_step < 0:
        raise ValueError(f"start_step must be non-negative, got {start_step}")
    if max_steps is not None and max_steps < start_step:
        raise ValueError(f"max_steps ({max_steps}) is before start_step ({start_step})")

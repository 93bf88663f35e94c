"""Frozen-encoder features: pooling definitions, the disk cache, and rank-sharded extraction."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import TensorDataset

from ijepa_ds.distributed import free_port
from ijepa_ds.eval.features import (
    POOLS,
    cached_features,
    encoder_fingerprint,
    extract_features,
    pool_dtype,
    pool_features,
    pool_width,
)
from ijepa_ds.models import VisionTransformer
from tests.helpers import cpu_env


def tiny_encoder(seed: int = 0, depth: int = 4) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=depth, num_heads=2
    ).eval()


def tiny_dataset(n: int = 12) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, 16, 16, generator=gen), torch.arange(n) % 3)


class ForwardCounter:
    """Counts encoder forward calls through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def test_avg_is_the_patch_mean_of_the_encoder_output():
    enc, data = tiny_encoder(), tiny_dataset()
    out = extract_features(enc, data, "avg", batch_size=5)
    with torch.no_grad():
        expected = enc(data.tensors[0]).mean(dim=1)
    assert out.features.shape == (12, 32)
    torch.testing.assert_close(out.features, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.labels, data.tensors[1])


def test_last4_concatenates_the_normed_pools_of_the_last_four_blocks():
    enc, data = tiny_encoder(depth=5), tiny_dataset()
    imgs = data.tensors[0]
    out = extract_features(enc, data, "last4", batch_size=7).features
    with torch.no_grad():
        x = enc.patch_embed(imgs) + enc.pos_embed
        pools = []
        for block in enc.blocks:
            x = block(x)
            pools.append(enc.norm(x).mean(dim=1))
        expected = torch.cat(pools[-4:], dim=1)
        avg = enc(imgs).mean(dim=1)
    assert out.shape == (12, 4 * 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # The last block's normed pool is exactly the "avg" feature.
    torch.testing.assert_close(out[:, -32:], avg, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, :32], avg, atol=1e-3)


def test_grid2_averages_each_quarter_of_the_patch_grid_row_major():
    enc, data = tiny_encoder(), tiny_dataset()
    out = extract_features(enc, data, "grid2", batch_size=5).features
    with torch.no_grad():
        tokens = enc(data.tensors[0]).reshape(12, 4, 4, 32)  # 16 px / patch 4 = 4x4 grid
    quarters = [tokens[:, r : r + 2, c : c + 2].mean(dim=(1, 2)) for r in (0, 2) for c in (0, 2)]
    assert out.shape == (12, 4 * 32)
    torch.testing.assert_close(out, torch.cat(quarters, dim=-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool", POOLS)
def test_pool_width_is_the_extracted_width(pool):
    enc, data = tiny_encoder(), tiny_dataset(3)
    out = extract_features(enc, data, pool, batch_size=2)
    assert out.features.shape == (3, pool_width(pool, 32, num_patches=16))  # 16 px, patch 4
    assert out.features.dtype == pool_dtype(pool)


def test_tokens_are_every_normed_last_layer_token_in_fp16():
    enc, data = tiny_encoder(), tiny_dataset(5)
    out = extract_features(enc, data, "tokens", batch_size=2).features
    with torch.no_grad():
        want = enc(data.tensors[0]).flatten(1)  # [5, 16 patches x 32]
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), want, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="give num_patches"):
        pool_width("tokens", 32)


def test_extraction_reports_progress_with_rate_and_eta(capsys):
    enc, data = tiny_encoder(), tiny_dataset(5)
    extract_features(enc, data, "avg", batch_size=2, label="train", progress_every_s=0)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" |")[0] for line in lines] == [
        "features train: 2/5 images (40%)",
        "features train: 4/5 images (80%)",
        "features train: 5/5 images (100%)",
    ]
    assert all(" img/s | ETA " in line for line in lines) and lines[-1].endswith("ETA 0:00:00")
    extract_features(enc, data, "avg", batch_size=2)  # the default: at most every 30 s
    assert capsys.readouterr().err == ""


def test_grid2_rejects_a_grid_smaller_than_two_patches():
    enc = VisionTransformer(img_size=4, patch_size=4, in_chans=1, embed_dim=8, depth=1, num_heads=1)
    with pytest.raises(ValueError, match="at least 2x2"):
        pool_features(enc.eval(), torch.zeros(1, 1, 4, 4), "grid2")


def test_last4_needs_four_blocks_and_unknown_pools_are_rejected():
    imgs = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match=">= 4 blocks"):
        pool_features(tiny_encoder(depth=3), imgs, "last4")
    with pytest.raises(ValueError, match="unknown feature pool 'cls'"):
        pool_features(tiny_encoder(), imgs, "cls")


def test_cache_is_reused_and_keyed_by_pool_and_weights(tmp_path):
    enc, data = tiny_encoder(), tiny_dataset()
    counter = ForwardCounter(enc)
    kwargs = dict(cache_dir=tmp_path, dataset_id="toy", split="train", batch_size=4)
    first = cached_features(enc, data, pool="avg", **kwargs)
    assert counter.calls == 3  # 12 images in batches of 4
    second = cached_features(enc, data, pool="avg", **kwargs)
    assert counter.calls == 3, "a cache hit must not run the encoder"
    assert torch.equal(first.features, second.features)
    assert torch.equal(first.labels, second.labels)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1

    last4 = cached_features(enc, data, pool="last4", **kwargs)
    assert counter.calls == 6 and last4.features.shape[1] == 128
    cached_features(enc, data, pool="avg", **{**kwargs, "split": "test"})
    assert counter.calls == 9

    with torch.no_grad():
        weight = enc.blocks[0].mlp.fc1.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)))
    changed = cached_features(enc, data, pool="avg", **kwargs)
    assert counter.calls == 12, "new weights must invalidate the cache"
    assert not torch.allclose(changed.features, first.features)


def test_fingerprint_follows_weights_and_head_count():
    a, b = tiny_encoder(seed=0), tiny_encoder(seed=0)
    assert encoder_fingerprint(a) == encoder_fingerprint(b)
    assert encoder_fingerprint(a) != encoder_fingerprint(tiny_encoder(seed=1))
    b.num_heads = 4
    assert encoder_fingerprint(a) != encoder_fingerprint(b)


RANK_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from torch.utils.data import TensorDataset
    from ijepa_ds.eval import features
    from ijepa_ds.eval.features import extract_features
    from ijepa_ds.models import VisionTransformer
    dist.init_process_group("gloo")
    features.GATHER_BLOCK_BYTES = int(sys.argv[4])
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=4,
                            num_heads=2)
    gen = torch.Generator().manual_seed(1)
    n, pool = int(sys.argv[2]), sys.argv[3]
    data = TensorDataset(torch.randn(n, 1, 16, 16, generator=gen), torch.arange(n) % 3)
    out = extract_features(enc, data, pool, batch_size=4)
    torch.save({"features": out.features, "labels": out.labels}, sys.argv[1])
    dist.destroy_process_group()
    """
)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "n, pool, world, block_bytes",
    # shards of ceil(n / world) rows in order: 11 on 2 ranks -> 6 + 5; 1 on 2 -> 1 + 0 (an
    # empty shard of the pool's width, and for tokens fp16); 7 on 3 -> 3 + 3 + 1; 2 on 3 ->
    # 1 + 1 + 0. The padding rows come after all N rows of the gathered buffer. block_bytes 1
    # gathers one row per call (6 calls, the last one partial on rank 1: 5 rows + padding),
    # 3000 five rows (last4 is 4 x 32 fp32 values, 512 bytes), 2**28 every shard in one call.
    [
        (11, "last4", 2, 1),
        (11, "last4", 2, 3000),
        (1, "grid2", 2, 2**28),
        (1, "tokens", 2, 2**28),
        (7, "grid2", 3, 2**28),
        (2, "tokens", 3, 1),
    ],
)
def test_ranks_extract_shards_and_gather_the_whole_dataset(tmp_path, n, pool, world, block_bytes):
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = cpu_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        out = str(tmp_path / f"rank{rank}.pt")
        cmd = [sys.executable, "-c", RANK_SCRIPT, out, str(n), pool, str(block_bytes)]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    single = extract_features(tiny_encoder(), tiny_dataset(n), pool, batch_size=4)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["features"], single.features, atol=1e-5, rtol=1e-5)
        assert torch.equal(got["labels"], single.labels)

"""Activation checkpointing: every implementation gives the gradients of no checkpointing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ijepa_ds.backend import act_ckpt
from ijepa_ds.backend.act_ckpt import apply_activation_checkpointing
from tests.backend.act_ckpt_worker import VARIANTS, build_models, grads
from tests.helpers import assert_ok, torchrun

WORKER = Path(__file__).with_name("act_ckpt_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("act_ckpt") / "results.json"
    assert_ok(torchrun(2, WORKER, str(out)))
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.distributed
def test_gradients_equal_without_checkpointing(results):
    plain = results["plain"]
    # implementations with and without offload x {encoder, predictor} x {every 1, every 2}
    assert len(plain) == len(VARIANTS) * 4 and len(VARIANTS) >= 5
    for name, entry in plain.items():
        assert entry["max_diff"] <= 1e-6, name
        assert entry["state_dict_keys_kept"], name
        depth = 4 if "/encoder/" in name else 2
        expected = depth if name.endswith("every1") else (depth + 1) // 2
        assert entry["checkpointed_blocks"] == expected, name


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["0", "3"])
def test_engine_gradients_equal_without_checkpointing(results, stage):
    """The trainer's engine on 2 ranks, every block checkpointed, vs the same engine without."""
    entries = results["zero"][stage]
    assert sorted(entries) == sorted(VARIANTS)
    for variant, entry in entries.items():
        # the config reached the engine: 4 encoder + 2 predictor blocks, with its offload flag
        assert entry["checkpointed"] == [list(VARIANTS[variant])] * 6, variant
        assert entry["grad_abs_max"] > 1e-4, "the gradients compared must not be all zero"
        assert entry["max_diff"] <= 1e-6, f"ZeRO {stage} {variant}: {entry['max_diff']}"
        assert entry["state_dict_keys_kept"], variant


@pytest.mark.parametrize("variant", ["torch", "torch+offload", "fairscale", "fairscale+offload"])
def test_in_process_gradients_equal_without_checkpointing(variant):
    impl, offload = VARIANTS[variant]
    encoder, predictor, imgs, masks_enc, masks_pred = build_models()
    baseline = grads(copy.deepcopy(encoder), copy.deepcopy(predictor), imgs, masks_enc, masks_pred)
    enc, pred = copy.deepcopy(encoder), copy.deepcopy(predictor)
    assert apply_activation_checkpointing(enc.blocks, 1, impl, offload) == 4
    # every=1 includes the pruned last predictor block (its forward takes query_from).
    assert apply_activation_checkpointing(pred.predictor_blocks, 1, impl, offload) == 2
    got = grads(enc, pred, imgs, masks_enc, masks_pred)
    assert max((got[k] - baseline[k]).abs().max().item() for k in baseline) <= 1e-6
    assert list(enc.state_dict()) == list(encoder.state_dict())
    assert list(pred.state_dict()) == list(predictor.state_dict())


class _SpySaveOnCpu(torch.autograd.graph.saved_tensors_hooks):
    """save_on_cpu stand-in recording the shapes of the tensors it is handed."""

    packed: list[tuple[int, ...]] = []

    def __init__(self, pin_memory: bool = False):
        def pack(t: torch.Tensor) -> torch.Tensor:
            self.packed.append(tuple(t.shape))
            return t

        super().__init__(pack, lambda t: t)


def test_torch_offload_hands_exactly_the_block_inputs_to_save_on_cpu(monkeypatch):
    # On a CPU device save_on_cpu keeps the tensor as it is: what can be checked here is that
    # the block inputs, and nothing recomputable, reach it.
    monkeypatch.setattr(act_ckpt, "save_on_cpu", _SpySaveOnCpu)
    monkeypatch.setattr(_SpySaveOnCpu, "packed", [])
    encoder, predictor, imgs, masks_enc, masks_pred = build_models()
    apply_activation_checkpointing(encoder.blocks, 1, "torch", cpu_offload=True)
    tokens = encoder(imgs, masks_enc)  # [B * nenc, K_enc, D]
    assert _SpySaveOnCpu.packed == [tuple(tokens.shape)] * 4
    _SpySaveOnCpu.packed.clear()
    plain = build_models()[0]
    apply_activation_checkpointing(plain.blocks, 1, "torch", cpu_offload=False)
    plain(imgs, masks_enc)
    assert _SpySaveOnCpu.packed == []


def test_fairscale_gets_the_offload_flag_and_a_deep_copy_runs_its_own_weights(monkeypatch):
    from fairscale.nn.checkpoint import checkpoint_activations

    flags = []
    real = checkpoint_activations._checkpointed_forward

    def spy(forward, weak_self, offload_to_cpu, *args, **kwargs):
        flags.append(offload_to_cpu)
        return real(forward, weak_self, offload_to_cpu, *args, **kwargs)

    monkeypatch.setattr(checkpoint_activations, "_checkpointed_forward", spy)
    blocks = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))
    apply_activation_checkpointing(blocks, 1, "fairscale", cpu_offload=True)
    copied = copy.deepcopy(blocks)
    x = torch.randn(2, 3, requires_grad=True)
    copied[1](copied[0](x)).sum().backward()
    assert flags == [True, True]
    assert all(p.grad is not None for p in copied.parameters())
    # checkpoint_wrapper's weak reference would have sent them to the original:
    assert all(p.grad is None for p in blocks.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="DeepSpeed offloads on a GPU")
def test_deepspeed_offload_on_a_cpu_device_is_refused():
    blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(2))
    with pytest.raises(ValueError, match="needs a GPU"):
        apply_activation_checkpointing(blocks, 1, "deepspeed", cpu_offload=True)
    assert "forward" not in vars(blocks[0])


def test_interval_and_errors():
    blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(5))
    assert apply_activation_checkpointing(blocks, 0) == 0
    assert apply_activation_checkpointing(blocks, 3) == 2  # blocks 0 and 3
    with pytest.raises(ValueError, match="act_ckpt_impl"):
        apply_activation_checkpointing(blocks, 1, "apex")
    with pytest.raises(ValueError, match=">= 0"):
        apply_activation_checkpointing(blocks, -1)
    with pytest.raises(ValueError, match="block 0 is checkpointed already"):
        apply_activation_checkpointing(blocks, 1, "fairscale")

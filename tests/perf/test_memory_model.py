"""The per-rank memory model: parameter counts and saved activations against torch itself,
1/W scaling, ZeRO stage ordering, precision, checkpointing and offload."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ijepa_ds.models import build_encoder, build_predictor
from ijepa_ds.models.layers import Block
from ijepa_ds.perf.flops import StepShape, TransformerShape
from ijepa_ds.perf.memory import (
    ActivationSettings,
    EngineSettings,
    block_saved_elements,
    deepspeed_estimate,
    estimate_memory,
    param_counts,
)

# ViT-L/16 at 224 with a 384-wide, 12-block predictor: big enough that the stages differ.
LARGE = StepShape(
    encoder=TransformerShape(dim=1024, depth=24, mlp_hidden=4096, num_heads=16),
    predictor=TransformerShape(dim=384, depth=12, mlp_hidden=1536, num_heads=16),
    in_chans=3,
    patch_size=16,
    num_patches=196,
    k_enc=60,
    k_pred=35,
)
ACT = ActivationSettings(batch=32)


def _estimate(stage: int, world: int = 8, precision: str = "bf16", act=ACT, **engine):
    return estimate_memory(LARGE, EngineSettings(stage, world, precision, **engine), act)


def test_param_counts_match_the_built_modules():
    shape = dataclasses.replace(
        LARGE,
        encoder=TransformerShape(dim=48, depth=3, mlp_hidden=192, num_heads=3),
        predictor=TransformerShape(dim=24, depth=2, mlp_hidden=96, num_heads=3),
        num_patches=16,
        patch_size=4,
    )
    enc = build_encoder("custom", img_size=16, patch_size=4, embed_dim=48, depth=3, num_heads=3)
    pred = build_predictor(enc, 24, 2, num_heads=3)
    counts = param_counts(shape)

    def numel(module, trainable):
        return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)

    assert counts.encoder_trainable == numel(enc, True)
    assert counts.encoder_frozen == numel(enc, False)  # the sin-cos table
    assert counts.predictor_trainable == numel(pred, True)
    assert counts.predictor_frozen == numel(pred, False)
    modules = (*enc.modules(), *pred.modules())
    assert counts.largest_layer == max(sum(p.numel() for p in m.parameters(False)) for m in modules)


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_block_saved_elements_match_what_autograd_saves(attn_impl):
    batch, tokens, dim, heads = 2, 10, 24, 3
    block = Block(dim, heads, attn_impl=attn_impl)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(batch, tokens, dim, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    shape = TransformerShape(dim=dim, depth=1, mlp_hidden=4 * dim, num_heads=heads)
    modelled = block_saved_elements(shape, tokens, attn_impl) * batch * tokens * 4
    assert sum(saved.values()) == modelled


def test_sharded_terms_scale_as_one_over_world_size():
    for stage in (1, 2, 3):
        small, big = _estimate(stage, world=2), _estimate(stage, world=8)
        assert small.master == 4 * big.master and small.moments == 4 * big.moments
        assert small.grads_step == pytest.approx(4 * big.grads_step)
        replicated = stage < 3
        assert (small.params == big.params) == replicated
        assert (small.target == big.target) == replicated
        assert small.activations == big.activations  # per rank: depends on the batch only
    assert _estimate(3, world=2).params == 4 * _estimate(3, world=8).params
    assert _estimate(0, world=2).model_states == _estimate(0, world=8).model_states


def test_higher_zero_stages_hold_less_model_state():
    states = [_estimate(stage).persistent for stage in (0, 1, 2, 3)]
    assert states[0] > states[1] >= states[2] > states[3]
    peaks = [_estimate(stage, reduce_bucket_size=10**6).peak for stage in (0, 1, 2, 3)]
    assert peaks == sorted(peaks, reverse=True)


def test_activation_checkpointing_reduces_activation_memory():
    acts = [
        _estimate(1, act=dataclasses.replace(ACT, act_ckpt_encoder=k, act_ckpt_predictor=k))
        for k in (0, 2, 1)
    ]
    assert acts[0].act_encoder > acts[1].act_encoder > acts[2].act_encoder
    assert acts[0].act_predictor > acts[1].act_predictor > acts[2].act_predictor
    assert acts[0].peak > acts[2].peak
    assert acts[0].act_targets == acts[2].act_targets  # target features are not checkpointed


def test_eager_attention_and_copy_gather_cost_activation_memory():
    sdpa = _estimate(1)
    eager = _estimate(1, act=dataclasses.replace(ACT, attn_impl="eager"))
    copy = _estimate(1, act=dataclasses.replace(ACT, mask_gather="copy"))
    assert eager.act_encoder > sdpa.act_encoder and eager.act_predictor > sdpa.act_predictor
    # the reference's repeated int64 index: 8 bytes x B x K_enc x D
    assert copy.act_encoder - sdpa.act_encoder == 8 * 32 * 60 * 1024


def test_bf16_halves_parameters_and_activations():
    fp32, bf16 = _estimate(2, precision="fp32"), _estimate(2, precision="bf16")
    assert fp32.params == 2 * bf16.params
    assert fp32.act_predictor == pytest.approx(2 * bf16.act_predictor, rel=0.01)
    assert fp32.master == bf16.master and fp32.target == bf16.target  # always fp32
    assert _estimate(0, precision="fp32").master == 0  # the fp32 params are the master


def test_offload_moves_optimizer_state_and_params_to_host():
    base = _estimate(3)
    off = _estimate(3, offload_optimizer=True, offload_param=True)
    assert off.master == off.moments == off.params == 0
    fp32_grads = base.master  # the fp32 gradient partition the host optimizer steps on
    assert off.host == pytest.approx(
        base.master + base.moments + fp32_grads + base.step_transient + base.params
    )
    assert off.peak < base.peak
    # On CPU ranks host memory is the device: offloading saves nothing, it costs the copy.
    eng = EngineSettings(3, 2, "bf16")
    plain = estimate_memory(LARGE, eng, ACT, device="cpu")
    offload = dataclasses.replace(eng, offload_optimizer=True)
    off = estimate_memory(LARGE, offload, ACT, device="cpu")
    # + the fp32 gradient copy, and the host step's temporaries held in every phase
    extra = plain.master + plain.step_transient
    assert off.phase_peaks()["save"] == pytest.approx(plain.phase_peaks()["save"] + extra)


def test_deepspeed_estimator_is_used_where_it_applies():
    counts = param_counts(LARGE)
    z2 = deepspeed_estimate(counts, EngineSettings(2, 8, "bf16"))
    assert z2 == 2 * counts.trainable + int(18 * counts.trainable / 8)
    assert deepspeed_estimate(counts, EngineSettings(3, 8, "bf16")) > 0
    assert deepspeed_estimate(counts, EngineSettings(1, 8, "bf16")) is None
    assert deepspeed_estimate(counts, EngineSettings(2, 8, "fp32")) is None


def test_engine_settings_read_the_resolved_deepspeed_config():
    ds = {
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 3,
            "reduce_bucket_size": 1000,
            "offload_optimizer": {"device": "cpu"},
            "stage3_max_reuse_distance": 0,
            "stage3_prefetch_bucket_size": 0,
        },
    }
    eng = EngineSettings.from_ds_config(ds, world_size=4)
    assert (eng.zero_stage, eng.precision, eng.offload_optimizer, eng.offload_param) == (
        3,
        "bf16",
        True,
        False,
    )
    assert eng.reduce_bucket_size == 1000
    # with no prefetching and no reuse allowed, ZeRO-3 releases every parameter after its forward
    assert estimate_memory(LARGE, eng, ACT).gathered == 0
    # prefetching keeps up to stage3_max_live_parameters gathered, whatever the reuse distance
    prefetching = dataclasses.replace(eng, prefetch_bucket_size=1000, max_live_parameters=5000)
    assert estimate_memory(LARGE, prefetching, ACT).gathered == 2 * 5000


def test_cpu_ranks_add_the_runtime_and_rank_0s_target_copy_at_a_save():
    from ijepa_ds.perf.memory import CPU_RUNTIME_BYTES

    eng = EngineSettings(3, 2, "bf16")
    gpu, cpu = estimate_memory(LARGE, eng, ACT), estimate_memory(LARGE, eng, ACT, device="cpu")
    full_target = 4.0 * param_counts(LARGE).target
    assert gpu.save_host == cpu.save_host == full_target  # the whole target, not a shard
    assert set(gpu.phase_peaks()) == {"forward", "backward", "step"}  # the copy is host memory
    for phase, value in gpu.phase_peaks().items():
        assert cpu.phase_peaks()[phase] == pytest.approx(value + CPU_RUNTIME_BYTES)
    assert cpu.phase_peaks()["save"] == pytest.approx(
        cpu.persistent + full_target + CPU_RUNTIME_BYTES
    )
    assert cpu.peak >= gpu.peak + CPU_RUNTIME_BYTES
    with pytest.raises(ValueError, match="device='tpu' must be one of"):
        estimate_memory(LARGE, eng, ACT, device="tpu")

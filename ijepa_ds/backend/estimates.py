"""DeepSpeed's own model-state memory estimators, for the planner to compare against."""

from __future__ import annotations


def zero_model_states_estimate(
    stage: int,
    trainable: int,
    largest_layer: int,
    gpus: int,
    offload_optimizer: bool,
    offload_param: bool,
) -> float:
    """Per-GPU bytes of 16-bit params, grads and fp32 optimizer states at ZeRO ``stage``
    (2 or 3) for ``trainable`` parameters on ``gpus`` GPUs of one node."""
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(
            trainable, num_gpus_per_node=gpus, cpu_offload=offload_optimizer
        )
        return float(gpu)
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        trainable,
        largest_layer,
        num_gpus_per_node=gpus,
        cpu_offload=offload_optimizer,
        cpu_offload_params=offload_param,
    )
    return float(gpu)

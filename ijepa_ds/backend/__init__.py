"""The DeepSpeed backend: the only package that imports ``deepspeed``.

- ``guard``: the tested DeepSpeed range and the internals we rely on, checked at start-up;
- ``comm``: DeepSpeed's process group (start, collective timeout, tear-down);
- ``ds_config``: our config -> the DeepSpeed config (engine knobs from ``ds_configs/``);
- ``param_groups``: the four reference AdamW groups and the schedules' lr/wd;
- ``act_ckpt``: activation checkpointing (torch, deepspeed or fairscale);
- ``engine``: ``build_engine`` and ``Engine``, the interface the trainer uses;
- ``zero3``: ZeRO-3 partition and gather, fp32 masters (what the EMA target needs);
- ``zero_files``: DeepSpeed checkpoint files, universal conversion;
- ``estimates``: DeepSpeed's own memory estimators (for the planner).

Submodules import ``deepspeed`` inside functions, so importing the package stays cheap.
"""

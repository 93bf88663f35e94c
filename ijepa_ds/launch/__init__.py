"""Launchers: several ranks on one machine (``local``) and multi-node SLURM jobs (``slurm``).

- ``local``: wraps ``torchrun`` or the ``deepspeed`` launcher around ``ijepa-ds train``;
- ``slurm``: submits through submitit (client side, ``slurm`` + ``monitor``);
- ``job``: what runs inside each SLURM task (rank variables, preemption, requeue);
- ``sweep``: the grid of runs of one ``--sweep`` submission;
- ``common``: the trainer arguments both pass on and their shared ``main``.

Both reuse the trainer's own argument parser (``ijepa_ds.cli.train_cmd``); nothing here
imports torch until a command runs.
"""

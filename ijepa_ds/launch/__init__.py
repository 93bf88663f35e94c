"""Launchers: several ranks on one machine (``local``) and multi-node SLURM jobs (``slurm``).

- ``local``: wraps ``torchrun`` or the ``deepspeed`` launcher around ``ijepa-ds train``;
- ``slurm``: submits through submitit (client side, ``slurm`` + ``monitor``);
- ``job``: what runs inside each SLURM task (rank variables, preemption, requeue);
- ``sweep``: the grid of runs of one ``--sweep`` submission.

Both take typed options (``LocalLaunch``, ``SlurmLaunch``) holding the run's ``TrainArgs``;
the CLI parses them (``ijepa_ds.cli.launch_cmd``). Nothing here imports torch until a command
runs.
"""

#!/usr/bin/env python3
"""Submit training to SLURM: the same as ``ijepa-ds launch slurm``.

    python launchers/submit_slurm.py --nodes 2 --tasks-per-node 1 --config fmnist_tiny --wait
    python launchers/submit_slurm.py --nodes 2 --tasks-per-node 8 --gpus-per-node 8 \\
        --time 3-00:00:00 --partition learn --config vit_h14_in1k logging.run_name=vith_%j
    python launchers/submit_slurm.py --dry-run --sweep schedule.lr=1e-3,5e-4 --config vit_b16_in1k

``--help`` lists every option; the trainer's arguments (``--config``, KEY=VALUE overrides,
``--resume``) are those of ``ijepa-ds train``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ijepa_ds.cli.launch_cmd import slurm_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(slurm_main())

"""``python -m ijepa_ds.train ARGS``: exactly ``ijepa-ds train ARGS`` (same errors, same exit
codes, the same shutdown after a clean finish). An entry point, like ``ijepa_ds/__main__``:
the one module of ``train`` that may reach up to the CLI."""

import sys

from ijepa_ds.cli.main import main

sys.exit(main(["train", *sys.argv[1:]]))

"""``python -m ijepa_ds.train``."""

import sys

from ijepa_ds.train.main import main

sys.exit(main())

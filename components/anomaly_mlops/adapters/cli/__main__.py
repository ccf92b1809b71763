"""``python -m anomaly_mlops.adapters.cli``: the same as the ``anomaly-mlops`` command."""

import sys

from anomaly_mlops.adapters.cli import main

sys.exit(main())

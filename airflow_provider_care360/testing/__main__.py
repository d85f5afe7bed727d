"""``python -m airflow_provider_care360.testing``: run the simulator until interrupted."""

import sys

from airflow_provider_care360.testing.cli import main

sys.exit(main())

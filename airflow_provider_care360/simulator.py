"""
The Care360 simulator's former home; it lives in :mod:`airflow_provider_care360.testing` now.

Kept so ``from airflow_provider_care360.simulator import Care360Simulator, Fault`` and
``python -m airflow_provider_care360.simulator`` keep working.
"""

import sys

from airflow_provider_care360 import testing
from airflow_provider_care360.testing import *  # noqa: F403

__all__ = testing.__all__

if __name__ == "__main__":
    sys.exit(testing.main())

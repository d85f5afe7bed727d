"""
The Care360 simulator's former home; it lives in :mod:`airflow_provider_care360.testing` now.

Kept so ``from airflow_provider_care360.simulator import Care360Simulator, Fault`` and
``python -m airflow_provider_care360.simulator`` keep working.
"""

import sys

from airflow_provider_care360.testing import (
    ADMIN,
    ADMIN_TOKEN_HEADER,
    FAULT_TARGETS,
    MAX_REQUEST_BYTES,
    Care360Simulator,
    Fault,
    main,
)

__all__ = [
    "ADMIN",
    "ADMIN_TOKEN_HEADER",
    "FAULT_TARGETS",
    "MAX_REQUEST_BYTES",
    "Care360Simulator",
    "Fault",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())

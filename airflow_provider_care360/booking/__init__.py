"""
The booking engine behind every operator: pure rules with explicit inputs.

- :mod:`~airflow_provider_care360.booking.engine`: look, send once, settle, verify.
- :mod:`~airflow_provider_care360.booking.journal`: what a try sent, in ``task_state_store``.
"""

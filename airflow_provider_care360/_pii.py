"""Masking of invitee personal data for logs and error messages."""

from __future__ import annotations


def mask_email(value: object) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``; anything else is masked whole."""
    if not isinstance(value, str):
        return "***"
    local, at, domain = value.strip().rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_name(value: object) -> str:
    """``John`` -> ``J***``."""
    if not isinstance(value, str) or not value.strip():
        return "***"
    return f"{value.strip()[0]}***"

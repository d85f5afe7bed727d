"""Masking of invitee personal data for logs and error messages."""

from __future__ import annotations


def mask_email(value: object) -> str:
    """
    ``jane.doe@smallclinic-family.com`` -> ``j***@s***.com``; anything unparseable -> ``***``.

    A small practice's domain can name the person as well as the local part can, so only the first
    letter of each side and the top-level domain are kept: ``a@b.co.uk`` -> ``a***@b***.uk``. A
    domain of one label keeps its first letter (``j***@e***``).
    """
    if not isinstance(value, str):
        return "***"
    local, at, domain = value.strip().rpartition("@")
    labels = domain.split(".")
    if not at or not local or not all(labels) or any(c.isspace() or c in "[]<>()," for c in domain):
        return "***"  # no address, an address literal ([192.0.2.1]), or text around the address
    masked = f"{local[0]}***@{labels[0][0]}***"
    return masked if len(labels) == 1 else f"{masked}.{labels[-1]}"


def mask_name(value: object) -> str:
    """``John`` -> ``J***``."""
    if not isinstance(value, str) or not value.strip():
        return "***"
    return f"{value.strip()[0]}***"

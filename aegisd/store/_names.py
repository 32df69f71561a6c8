"""Names of the store's collections and logs."""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def check_name(name: str) -> str:
    """Collection and log names are short lowercase identifiers (they become file names, table rows, key parts)."""
    if not NAME_RE.match(name):
        raise ValueError(f"bad collection or log name {name!r}")
    return name

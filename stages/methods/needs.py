"""What each registered method reads from the shared cache.

Kept free of torch imports because the workflow reads it while parsing, to refuse a variant
whose inputs the configuration does not produce before any job runs.
"""
from __future__ import annotations

METHOD_NEEDS: dict[str, frozenset[str]] = {
    "ce": frozenset({"pseudo_labels"}),
}

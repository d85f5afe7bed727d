"""docs/fault-matrix.md's table is the fault matrix's cases, as the matrix run asserts them."""

from __future__ import annotations

import importlib.util

from test_fault_matrix import CASES

from support import ROOT


def test_the_documented_fault_table_is_the_matrix() -> None:
    spec = importlib.util.spec_from_file_location("fault_table", ROOT / "scripts" / "fault_table.py")
    assert spec and spec.loader
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert table.current() == table.block(CASES), "run: python scripts/fault_table.py"

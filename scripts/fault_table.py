"""
Write the fault-matrix table of ``docs/fault-matrix.md`` from ``tests/test_fault_matrix.py``'s cases.

Each row is one case the matrix runs through a real DAG run and asserts on every supported
Airflow; ``tests/test_fault_table.py`` fails when the document and the cases disagree. Run
``python scripts/fault_table.py`` after changing a case.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "fault-matrix.md"
BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"
DAGS = {
    "care360_t_no_retries": "`retries=0`",
    "care360_t_no_check": "`check_existing=False`",
    "care360_t_ambiguous_retry": "`check_existing=False, retry_on_ambiguous=True`",
    "care360_t_timeout": "`execution_timeout` 2 s, `settle_delay` 6 s",
    "care360_t_no_policy": "`retry_policy=None`",
}


def render(cases: dict[str, Any]) -> str:
    lines = [
        "| case | task | bookings made | final state (tries) | outcome | a person needed? | Airflow < 3.3 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, case in cases.items():
        task = DAGS.get(case.dag, "`retries=2`")
        made = f"{case.booked}" + (" new (1 exists)" if case.preload and case.booked == 0 else "")
        posts = "" if case.posts is None else f", {case.posts} POST" + ("" if case.posts == 1 else "s")
        state = f"{case.state} ({case.tries}{posts})"
        old = "the same"
        if case.before_33 is not None:
            old = f"{case.before_33[0]} ({case.before_33[1]}), {case.before_33[2]}: the try holds the window"
        elif case.only_33:
            old = f"not run: {case.only_33}"
        lines.append(f"| {name} | {task} | {made} | {state} | {case.outcome} | {case.person} | {old} |")
    return "\n".join(lines) + "\n"


def block(cases: dict[str, Any]) -> str:
    return f"{BEGIN}\n{render(cases)}{END}"


def current() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def main() -> None:
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    from test_fault_matrix import CASES

    text = DOC.read_text()
    DOC.write_text(text.replace(current(), block(CASES)))
    print(f"wrote {len(CASES)} rows to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""A failure is not a wrong answer: samples whose generation or scoring failed (an engine error, a
prompt too long for the context, a scorer or sandbox failure) leave the paired statistics.

They are counted per variant and bench: the scoreboard's `errors_excluded` holds the error
samples of the variant and of the baseline on that bench, and each bench with errors is marked
`§` with a note saying how many were left out. The anomalies table still lists them (kind
`error`): excluded from the scores, never hidden.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.analysis.cohort import Note

ERROR_MARK = "§"


def split_errors(rows: pa.Table) -> tuple[pa.Table, Counter]:
    """(the rows without an error, error samples per (variant, bench)); rows carry `has_error`."""
    failed = pc.fill_null(rows["has_error"], False)
    counts = Counter(zip(*(rows.filter(failed)[c].to_pylist() for c in ("variant", "bench"))))
    return rows.filter(pc.invert(failed)), counts


def excluded(errors: Counter, baseline: str, variant: str, bench: str) -> int:
    """Error samples left out of one variant's pairing with the baseline on one bench (both sides)."""
    return errors[(variant, bench)] + (errors[(baseline, bench)] if variant != baseline else 0)


def error_notes(errors: Counter, baseline: str, variants: list[str], benches: list[str]) -> list[Note]:
    notes = []
    for bench in benches:
        for variant in [baseline, *variants]:
            k = errors[(variant, bench)]
            if k:
                notes.append(Note(bench, variant, ERROR_MARK, f"{bench}: {k} error sample{'s' * (k != 1)} of {variant} "
                                  "excluded (engine, scorer or sandbox failures are not wrong answers)"))
    return notes


def with_error_rows(scored: pa.Table, rows: pa.Table) -> pa.Table:
    """The scored rows (with `primary` and `passed`) and the error rows after them (not passed), for
    the tables that list failures rather than score them (anomalies)."""
    failed = rows.filter(pc.fill_null(rows["has_error"], False))
    n = failed.num_rows
    failed = failed.append_column("primary", pa.array(np.zeros(n))).append_column("passed", pa.array(np.zeros(n, bool)))
    return pa.concat_tables([scored, failed.select(scored.column_names)]) if n else scored

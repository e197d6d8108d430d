"""The routing side table: which experts each stored sample used, beside the samples.

    routing/<variant>/<bench>/part-<uuid>.parquet

One row per sample x segment x MoE layer, keyed like the samples (`RESUME_KEY` plus `variant`):
`segment` is `prompt`, `reasoning` or `answer` (a position counts for the token it predicts, see
`variants/routing.py`), `positions` the token positions of that segment, and per expert (lists
of `num_experts` entries) `tokens`, how many of those positions routed to the expert, and
`weight`, their summed routing weight. `model` names the checkpoint that did the routing. Written
by `omk-ray route`, read by `omk-ray experts` and `compare`; any Parquet reader sees it, e.g.
`duckdb.sql("select * from 'RESULTS/routing/**/*.parquet'")`.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from omk_ray.results.schema import RESUME_KEY
from omk_ray.results.store import write_parquet

ROUTING_DIR = "routing"
SEGMENTS = ("prompt", "reasoning", "answer")
ROUTING_SCHEMA = pa.schema([
    ("variant", pa.string()),
    ("variant_fingerprint", pa.string()),
    ("recipe_hash", pa.string()),
    ("bench", pa.string()),
    ("doc_id", pa.string()),
    ("repeat", pa.int32()),
    ("segment", pa.string()),
    ("layer", pa.int32()),
    ("positions", pa.int32()),
    ("tokens", pa.list_(pa.int32())),
    ("weight", pa.list_(pa.float32())),
    ("model", pa.string()),
])  # fmt: skip


class RoutingTable:
    """The routing side table of a results root."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / ROUTING_DIR

    def write_shard(self, table: pa.Table, variant: str, bench: str) -> Path:
        """One shard, written aside and renamed: a crash leaves the whole shard or nothing."""
        folder = self.root / variant / bench
        folder.mkdir(parents=True, exist_ok=True)
        return write_parquet(table.cast(ROUTING_SCHEMA), folder / f"part-{uuid.uuid4().hex[:12]}.parquet")

    def shard_paths(self, variant: str | None = None) -> list[Path]:
        folder = self.root / variant if variant else self.root
        if not folder.is_dir():
            return []
        return sorted(folder.glob("*/part-*.parquet" if variant else "*/*/part-*.parquet"))

    def read(self, variant: str | None = None, filter=None, columns: list[str] | None = None) -> pa.Table:
        paths = self.shard_paths(variant)
        if not paths:
            empty = ROUTING_SCHEMA.empty_table()
            return empty if columns is None else empty.select(columns)
        dataset = ds.dataset([str(p) for p in paths], schema=ROUTING_SCHEMA, format="parquet")
        return dataset.to_table(columns=columns, filter=filter)

    def routed_keys(self, variant: str) -> set[tuple]:
        """Sample keys (`RESUME_KEY`) of the variant that have routing rows."""
        table = self.read(variant, columns=list(RESUME_KEY))
        return set(zip(*(table.column(c).to_pylist() for c in RESUME_KEY)))

    def clear(self, variant: str, benches: list[str] | None = None) -> None:
        """Drop the variant's routing rows: on `benches` only, or on every bench."""
        for folder in [self.root / variant / b for b in benches] if benches else [self.root / variant]:
            shutil.rmtree(folder, ignore_errors=True)

"""What the viewer reads: the comparison of `compare` (cached while the folder stays the same) and the
rows of one problem, read from the shards of its variant and bench folders only, the needed columns only.

Every number the pages show comes from `omk_ray.analysis.compare.compare` with the card's defaults,
so the page and `omk-ray compare ... --format card` agree; only the samples' texts are read here.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

from omk_ray.analysis.compare import Comparison, CompareOptions, compare
from omk_ray.analysis.samples import AnalysisError, natural_key
from omk_ray.results.schema import RESUME_KEY, SAMPLE_SCHEMA
from omk_ray.results.store import ResultsStore, newest_per_key

OUTCOMES = ("lost", "gained", "both_wrong", "both_correct", "anomalies")
# What a problem page shows of each side (the text columns are read for one problem only).
PROBLEM_COLUMNS = [
    "variant", "bench", "doc_id", "repeat", "prompt_tokens", "completion_tokens", "reasoning_tokens", "finish_reason",
    "response", "reasoning", "extracted_answer", "target", "score", "correct", "metrics", "domain", "subdomain",
    "latency_s", "engine", "engine_version", "score_detail", "isolation", "error", "run_id",
]  # fmt: skip
SEARCHED = ["response", "reasoning", "extracted_answer"]
SYNC_S = 2.0  # a comparison quicker than this is recomputed before the page; a slower one in the background


@dataclass
class Side:
    """One variant's row of a problem (None where it has none)."""

    variant: str
    row: dict | None


class ViewData:
    def __init__(self, root: str | Path, baseline: str | None = None):
        self.store = ResultsStore(root)
        self.root = self.store.root
        self._lock = threading.Lock()
        self._cached: tuple[tuple, Comparison | None, str | None] | None = None
        self._took = 0.0  # seconds the last comparison took
        self.updating = False  # a newer comparison is being computed in the background
        self.computed_at: datetime | None = None
        self.baseline = baseline or self._default_baseline()
        known = self.variants()
        if self.baseline not in known:
            raise AnalysisError(f"baseline {self.baseline!r} has no samples in {self.root} and no run's grid names it "
                                f"(variants: {', '.join(sorted(known)) or 'none'})")

    # -- the comparison -----------------------------------------------------------------------

    def signature(self) -> tuple:
        """Changes whenever a shard or a run manifest is written, renamed or removed."""
        files = self.store.shard_paths()
        if self.store.runs_dir.is_dir():
            files += sorted(self.store.runs_dir.glob("*/manifest.json"))
        out = []
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def comparison(self) -> tuple[Comparison | None, str | None]:
        """(the comparison, None), or (None, why there is none yet), computed again when the folder changed.

        A comparison that took more than SYNC_S to compute (a large store) is computed again in the background
        while the pages keep showing the last one (`updating` says so)."""
        with self._lock:
            sig = self.signature()
            if self._cached is not None and self._cached[0] != sig:
                if self._took < SYNC_S:
                    self._cached = self._compute(sig)
                elif not self.updating:
                    self.updating = True
                    threading.Thread(target=self._in_background, daemon=True).start()
            elif self._cached is None:
                self._cached = self._compute(sig)
            return self._cached[1], self._cached[2]

    def _compute(self, sig: tuple) -> tuple[tuple, Comparison | None, str | None]:
        t0 = time.monotonic()
        try:
            options = CompareOptions(baseline=self.baseline, variants=self.compared() or None)
            result = (sig, compare(self.root, options), None)
        except AnalysisError as err:
            result = (sig, None, str(err))
        self._took = time.monotonic() - t0
        self.computed_at = datetime.now(timezone.utc)
        return result

    def _in_background(self) -> None:
        try:
            result = self._compute(self.signature())
            with self._lock:
                self._cached = result
        finally:
            self.updating = False

    def compared(self) -> list[str]:
        """The variants with samples other than the baseline, in the newest grid's order (as `omk-ray demo` and a
        `compare --variants` in grid order show them), then the others by name."""
        stored = {p.parent.parent.name for p in self.store.shard_paths()} - {self.baseline}
        order = []
        for run in reversed(self.store.runs()):
            config = run.records().manifest.config
            if config and config.get("variants"):
                order = [v["name"] for v in config["variants"]]
                break
        return [v for v in order if v in stored] + sorted(stored - set(order))

    def variants(self) -> set[str]:
        """The variants with a samples folder, and those the runs' grids name (a running grid's not written yet)."""
        names = {p.name for p in self.store.samples_dir.iterdir()} if self.store.samples_dir.is_dir() else set()
        for run in self.store.runs():
            names.update(v["name"] for v in (run.records().manifest.config or {}).get("variants") or [])
        return names

    def _default_baseline(self) -> str:
        """The first variant of the newest run's grid (grids list the baseline first), else the first stored."""
        for run in reversed(self.store.runs()):
            config = run.records().manifest.config
            if config and config.get("variants"):
                return config["variants"][0]["name"]
        names = sorted(p.name for p in self.store.samples_dir.iterdir()) if self.store.samples_dir.is_dir() else []
        if not names:
            raise AnalysisError(f"{self.root}: no samples (expected Parquet shards under {self.store.samples_dir})")
        return names[0]

    # -- problems -----------------------------------------------------------------------------

    def problems(self, c: Comparison, variant: str, bench: str | None = None, outcome: str | None = None,
                 domain: str | None = None, query: str | None = None) -> list[dict]:
        """The paired problems of a variant (the `problems` table of compare), filtered."""
        table = c.tables["problems"]
        where = pc.equal(table["variant"], variant)
        if bench:
            where = pc.and_(where, pc.equal(table["bench"], bench))
        if domain:
            where = pc.and_(where, pc.equal(pc.fill_null(table["domain"], "(none)"), domain))
        if outcome and outcome != "anomalies":
            where = pc.and_(where, pc.equal(table["outcome"], outcome))
        rows = table.filter(where).to_pylist()
        if outcome == "anomalies":
            flagged = self.anomaly_docs(c, variant, bench)
            rows = [r for r in rows if (r["bench"], r["doc_id"]) in flagged]
            for r in rows:
                r["anomalies"] = flagged[(r["bench"], r["doc_id"])]
        if query:
            benches = sorted({r["bench"] for r in rows})
            hits = self.search(query, [c.baseline, variant], benches)
            rows = [r for r in rows if (r["bench"], r["doc_id"]) in hits]
        return sorted(rows, key=lambda r: (r["bench"], natural_key(r["doc_id"])))

    def anomaly_docs(self, c: Comparison, variant: str, bench: str | None = None) -> dict[tuple[str, str], list[str]]:
        """(bench, doc) -> anomaly kinds, for the examples the anomalies table names (the variant's and the baseline's)."""
        out: dict[tuple[str, str], list[str]] = {}
        for r in c.rows("anomalies"):
            if r["variant"] not in (variant, c.baseline) or (bench and r["bench"] != bench):
                continue
            for doc in r["examples"] or []:
                out.setdefault((r["bench"], doc), []).append(f"{r['variant']}: {r['kind']}")
        return out

    def search(self, query: str, variants: list[str], benches: list[str]) -> set[tuple[str, str]]:
        """(bench, doc) whose answer, reasoning or extracted answer holds `query` (any case), for these variants."""
        paths = self._paths(variants, benches)
        if not paths:
            return set()
        hit = None
        for column in SEARCHED:
            match = pc.match_substring(pc.field(column), query, ignore_case=True)
            hit = match if hit is None else (hit | match)
        table = _dataset(paths).to_table(columns=["bench", "doc_id"], filter=hit)
        return set(zip(table["bench"].to_pylist(), table["doc_id"].to_pylist()))

    def problem(self, variants: list[str], bench: str, doc_id: str, repeat: int = 0) -> list[Side]:
        """Each variant's newest row of this problem and repeat: only its folders and needed columns are read."""
        paths = self._paths(variants, [bench])
        found: dict[str, dict] = {}
        if paths:
            where = (pc.field("doc_id") == doc_id) & (pc.field("repeat") == repeat)
            columns = list(dict.fromkeys([*PROBLEM_COLUMNS, *RESUME_KEY, "started_at"]))
            table = newest_per_key(_dataset(paths).to_table(columns=columns, filter=where))
            for row in table.to_pylist():
                found[row["variant"]] = row  # several fingerprints or recipes: the last read wins
        for row in found.values():
            row["metrics"] = dict(row["metrics"] or [])
        return [Side(v, found.get(v)) for v in variants]

    def _paths(self, variants: list[str], benches: list[str]) -> list[str]:
        return [str(p) for v in variants for b in benches
                for p in sorted((self.store.samples_dir / v / b).glob("part-*.parquet"))]


def _dataset(paths: list[str]) -> ds.Dataset:
    return ds.dataset(paths, schema=SAMPLE_SCHEMA, format="parquet")


def first_prompt(messages: list[dict] | None) -> str | None:
    if not messages:
        return None
    return "\n\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" for m in messages)


class Prompts:
    """The messages of a bench's documents, loaded once per bench from the spec the runs recorded
    (or the prompt an imported log kept); None where the data cannot be read here."""

    def __init__(self, store: ResultsStore):
        self.store = store
        self._docs: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, bench: str, doc_id: str) -> str | None:
        with self._lock:
            if bench not in self._docs:
                self._docs[bench] = self._load(bench)
        return self._docs[bench].get(doc_id)

    def _load(self, bench: str) -> dict[str, str]:
        try:
            from omk_ray.benches import make_bench
            from omk_ray.results.rescore import bench_specs

            spec = bench_specs(self.store).get(bench)
            if spec is not None:
                return {d.id: first_prompt(d.messages) for d in make_bench(spec).docs()}
        except Exception:  # noqa: BLE001 - data gone, hub unreachable: the page says the prompt is unknown
            pass
        return imported_prompts(self.store, bench)


def imported_prompts(store: ResultsStore, bench: str) -> dict[str, str]:
    """The prompts an imported lm-eval log kept (results/importers.py), by doc id."""
    import json

    from omk_ray.results.importers import bench_sidecar_paths

    _, path = bench_sidecar_paths(store.root, bench)
    found = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line) if line.strip() else {}
        if isinstance(record.get("prompt"), str):
            found[str(record["doc_id"])] = record["prompt"]
    return found

"""Routing of stored samples (`omk-ray route`): teacher-force every stored (prompt, response) of a
variant through a model with the profiler's hooks (`profile.ExpertRecorder`) and write, per
sample, segment and MoE layer, the tokens each expert received and their summed routing weight
to the routing side table (`results/routing.py`).

**Prompt**: rendered exactly as the engines render it (`engines.base.render_prompt`) from the
bench's messages for the doc, with the recipe whose hash the row carries (the run manifests
hold the grids). An imported lm-eval log supplies its logged prompt instead (kept beside the
imported docs): a JSON list of chat messages goes through the model's chat template, a plain
string is tokenized as it is. **Completion**: the stored reasoning between the recipe's
reasoning markers (the opening one unless the prompt opened the thought), then the answer,
tokenized again.

**Segments**: a position counts for the token it predicts. The first P-1 positions of a P-token
prompt are `prompt`; the position that produced a generated token counts for that token's
segment (`reasoning`, markers included, or `answer`); when the sample ended on an end token
(finish reason `stop`, or unknown as in imported logs) the position that produced it counts for
`answer`. So a sample's routing is the routing the engine computed while generating it: the
prompt's prefill plus one decoding step per generated token but the last. It is exact when
tokenizing the stored text again gives back the generated ids (true of the toy's tokenizer); a
stop string that cut the text, special tokens the decoder skipped, or a thinking budget's
second pass make it approximate.

Rows with an error are not routed (the farm runs them again). Samples already in the table are
skipped unless `force`. `workers > 1` spreads the samples over Ray actors that each load the
model once (one GPU each on a GPU cluster).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.config import Recipe, recorded_grid
from omk_ray.results.routing import ROUTING_SCHEMA, SEGMENTS, RoutingTable
from omk_ray.results.schema import RESUME_KEY
from omk_ray.results.store import ResultsStore

PROMPT, REASONING, ANSWER = (SEGMENTS.index(s) for s in ("prompt", "reasoning", "answer"))
CHUNK = 64  # samples per call of a routing actor (and per written shard)
ROW_COLUMNS = [*RESUME_KEY, "variant", "response", "reasoning", "finish_reason", "prompt_tokens", "error"]


def _check_model(model: str) -> None:
    """A local checkpoint folder must exist and hold config.json (a hub id is checked when loaded)."""
    path = Path(model).expanduser()
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1
    if path.is_dir() and not (path / "config.json").is_file():
        raise RouteError(f"model {model}: no config.json there, so not a checkpoint folder")
    if looks_local and not path.exists():
        raise RouteError(f"model {model}: no such checkpoint folder (a hub id is NAME or ORG/NAME)")


class RouteError(ValueError):
    """Samples that cannot be routed; the message names the variant, bench or doc."""


@dataclass
class Forced:
    """One sample ready to teacher-force: the token ids fed and the segment each position counts for."""

    key: tuple  # RESUME_KEY values
    variant: str
    ids: list[int]
    segments: list[int]  # index into SEGMENTS, one per fed position


@dataclass
class RouteReport:
    variant: str
    model: str
    samples: int = 0  # stored samples of the variant (on the chosen benches)
    routed: int = 0
    already: int = 0  # routed before, skipped
    errors: int = 0  # rows with an error, not routed
    truncated: int = 0  # cut at max_length
    prompt_mismatch: int = 0  # rendered prompt length differs from the stored prompt_tokens
    benches: dict[str, int] = field(default_factory=dict)


# -- from a stored row to the ids to feed -----------------------------------------------------


def forced_positions(prompt: list[int], completion: list[tuple[int, list[int]]], terminated: bool
                     ) -> tuple[list[int], list[int]]:
    """(ids to feed, segment per fed position) for a prompt and its completion as (segment, ids) parts."""
    body = [t for _, ids in completion for t in ids]
    labels = [seg for seg, ids in completion for _ in ids]
    fed = (prompt + body)[: len(prompt) - 1 + len(body) + (1 if terminated else 0)]
    return fed, ([PROMPT] * (len(prompt) - 1) + labels + ([ANSWER] if terminated else []))[: len(fed)]


def completion_parts(tokenizer, prompt: list[int], response: str | None, reasoning: str | None,
                     finish_reason: str | None, recipe: Recipe) -> list[tuple[int, list[int]]]:
    """The stored completion as (segment, token ids) parts: the thought with its markers, then the answer."""
    from omk_ray.engines.base import marker_id, open_thought

    def encode(text: str | None) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    parts = []
    start, end = (marker_id(tokenizer, m) for m in recipe.reasoning_markers)
    if reasoning is not None and start is not None and end is not None:
        opened = open_thought(prompt, start, end) is not None
        closed = finish_reason != "length_in_reasoning"
        parts.append((REASONING, ([] if opened else [start]) + encode(reasoning) + ([end] if closed else [])))
    parts.append((ANSWER, encode(response)))
    return parts


class SampleSource:
    """Where a results store's samples of one variant got their prompts: the benches and recipes the
    runs' grids declared, the model they ran, and the prompts imported logs kept."""

    def __init__(self, store: ResultsStore, variant: str):
        self.store = store
        self.variant = variant
        self.specs: dict = {}
        self.recipes: dict[tuple[str, str], Recipe] = {}
        for run in store.runs():
            config = run.records().manifest.config
            if not config:
                continue
            grid = recorded_grid(config, f"{run.manifest_path} (config)")
            if variant not in {v.name for v in grid.variants}:
                continue
            spec = grid.variant(variant)
            for bench in grid.benches:
                self.specs[bench.name] = bench
                recipe = grid.recipe_for(spec, bench)
                self.recipes[(bench.name, recipe.hash)] = recipe
        self.model_path = checkpoint_of(store, variant)
        self._messages: dict[str, dict[str, list[dict]]] = {}
        self._imported: dict[str, dict[str, str]] = {}

    def prompt(self, tokenizer, bench: str, doc_id: str, recipe_hash: str) -> tuple[list[int], Recipe]:
        from omk_ray.engines.base import render_prompt

        recipe = self.recipes.get((bench, recipe_hash))
        if recipe is not None:
            messages = self._bench_messages(bench).get(doc_id)
            if messages is None:
                raise RouteError(f"bench {bench!r}: doc {doc_id!r} is not in the bench's data any more")
            return render_prompt(tokenizer, messages, recipe), recipe
        logged = self._imported_prompts(bench).get(doc_id)
        if logged is None:
            raise RouteError(
                f"bench {bench!r}, doc {doc_id!r}: no run manifest declares recipe {recipe_hash} for variant "
                f"{self.variant!r} and no imported prompt is kept for it (import the log again with this omk-ray)"
            )
        messages = _logged_messages(logged)
        recipe = Recipe(chat_template=messages is not None)
        return render_prompt(tokenizer, messages or [{"role": "user", "content": logged}], recipe), recipe

    def _bench_messages(self, bench: str) -> dict[str, list[dict]]:
        if bench not in self._messages:
            from omk_ray.benches import make_bench

            try:
                docs = make_bench(self.specs[bench]).docs()
            except (OSError, ValueError, KeyError) as err:
                raise RouteError(f"bench {bench!r}: cannot load its docs to rebuild the prompts: {err}") from None
            self._messages[bench] = {d.id: d.messages for d in docs}
        return self._messages[bench]

    def _imported_prompts(self, bench: str) -> dict[str, str]:
        if bench not in self._imported:
            from omk_ray.results.importers import bench_sidecar_paths

            _, docs_path = bench_sidecar_paths(self.store.root, bench)
            found = {}
            if docs_path.is_file():
                for line in docs_path.read_text().splitlines():
                    record = json.loads(line) if line.strip() else {}
                    if isinstance(record.get("prompt"), str):
                        found[str(record["doc_id"])] = record["prompt"]
            self._imported[bench] = found
        return self._imported[bench]


def checkpoint_of(store: ResultsStore, variant: str) -> str | None:
    """The checkpoint the variant's latest run loaded (run manifests record it), if any."""
    path = None
    for run in store.runs():
        path = run.records().manifest.model_paths.get(variant) or path
    return path


def _logged_messages(prompt: str) -> list[dict] | None:
    """lm-eval logs a chat request as its messages in JSON; anything else is a plain prompt."""
    if not prompt.lstrip().startswith("[{"):
        return None
    try:
        messages = json.loads(prompt)
    except json.JSONDecodeError:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# -- teacher forcing ----------------------------------------------------------------------------


class Router:
    """A model with the recorder on every MoE block, turning `Forced` samples into routing rows."""

    def __init__(self, model_dir: str, dtype: str = "auto", device: str | None = None, revision: str | None = None,
                 batch_size: int = 8):
        from omk_ray.variants.profile import ExpertRecorder, load_model

        self.model_dir = str(model_dir)
        self.model, tokenizer, self.device = load_model(self.model_dir, dtype, device, revision)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.recorder = ExpertRecorder(self.model, norms=False)
        self.batch_size = batch_size

    def route(self, samples: list[Forced]) -> pa.Table:
        from omk_ray.variants.profile import ROUTED, replay

        tc, wsum = ROUTED.index("tc"), ROUTED.index("wsum")
        columns: dict[str, list] = defaultdict(list)
        ordered = sorted(samples, key=lambda s: -len(s.ids))
        n_seg = len(SEGMENTS)
        for start in range(0, len(ordered), self.batch_size):
            batch = ordered[start : start + self.batch_size]
            self.recorder.reset(owners=n_seg * len(batch))
            replay(self.model, self.recorder, [s.ids for s in batch], self.pad_id, self.device,
                   owners=[[n_seg * i + seg for seg in s.segments] for i, s in enumerate(batch)])
            stats = {layer: block.numpy() for layer, block in self.recorder.stats.items()}
            for i, sample in enumerate(batch):
                for seg, name in enumerate(SEGMENTS):
                    positions = sample.segments.count(seg)
                    if not positions:
                        continue
                    for layer, block in stats.items():
                        for column, value in zip(RESUME_KEY, sample.key):
                            columns[column].append(value)
                        columns["variant"].append(sample.variant)
                        columns["segment"].append(name)
                        columns["layer"].append(layer)
                        columns["positions"].append(positions)
                        columns["tokens"].append(block[n_seg * i + seg, :, tc].round().astype("int32"))
                        columns["weight"].append(block[n_seg * i + seg, :, wsum].astype("float32"))
                        columns["model"].append(self.model_dir)
        if not columns:
            return ROUTING_SCHEMA.empty_table()
        return pa.table({name: pa.array(columns[name], type=ROUTING_SCHEMA.field(name).type)
                         for name in ROUTING_SCHEMA.names})

    def close(self) -> None:
        self.recorder.close()


# -- the command ---------------------------------------------------------------------------------


def route_variant(
    results: str | Path,
    variant: str,
    model: str | None = None,
    *,
    benches: list[str] | None = None,
    workers: int = 1,
    batch_size: int = 8,
    max_length: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    revision: str | None = None,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> RouteReport:
    """Route the stored samples of `variant` through `model` (default: the checkpoint its runs used)."""
    store = ResultsStore(results)
    where = pc.field("variant") == variant
    if benches:
        where &= pc.field("bench").isin(benches)
    rows = store.read(columns=ROW_COLUMNS, filter=where)
    if rows.num_rows == 0:
        stored = sorted(set(store.read(columns=["variant"])["variant"].to_pylist()))
        raise RouteError(f"{results}: no samples of variant {variant!r}"
                         + (f" on benches {benches}" if benches else "") + f" (variants there: {', '.join(stored) or 'none'})")
    source = SampleSource(store, variant)
    model = model or source.model_path
    if not model:
        raise RouteError(f"variant {variant!r}: no run manifest in {results} names its checkpoint "
                         "(imported samples?): give --model")
    _check_model(str(model))
    table = RoutingTable(results)
    if force:
        table.clear(variant, benches)
    done = table.routed_keys(variant)
    report = RouteReport(variant=variant, model=str(model), samples=rows.num_rows)

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    except OSError as err:  # a hub id that does not exist, no network, no access
        raise RouteError(f"model {model}: cannot load its tokenizer ({str(err).splitlines()[0]})") from None
    by_bench: dict[str, list[Forced]] = defaultdict(list)
    for row in rows.to_pylist():
        key = tuple(row[c] for c in RESUME_KEY)
        if row["error"] is not None:
            report.errors += 1
            continue
        if key in done:
            report.already += 1
            continue
        prompt, recipe = source.prompt(tokenizer, row["bench"], row["doc_id"], row["recipe_hash"])
        if row["prompt_tokens"] and row["prompt_tokens"] != len(prompt):
            report.prompt_mismatch += 1
        parts = completion_parts(tokenizer, prompt, row["response"], row["reasoning"], row["finish_reason"], recipe)
        terminated = row["finish_reason"] not in ("length", "length_in_reasoning")
        ids, segments = forced_positions(prompt, parts, terminated)
        if max_length and len(ids) > max_length:
            report.truncated += 1
            ids, segments = ids[:max_length], segments[:max_length]
        by_bench[row["bench"]].append(Forced(key, variant, ids, segments))
        done.add(key)

    size = max(1, min(CHUNK, -(-sum(map(len, by_bench.values())) // max(1, workers))))  # every worker gets some
    chunks = [(bench, todo[i : i + size]) for bench, todo in by_bench.items() for i in range(0, len(todo), size)]
    total = sum(len(c) for _, c in chunks)
    for bench, routed in _run(chunks, str(model), workers, dict(dtype=dtype, device=device, revision=revision,
                                                                   batch_size=batch_size)):
        table.write_shard(routed, variant, bench)
        count = len(set(zip(*(routed.column(c).to_pylist() for c in RESUME_KEY))))
        report.routed += count
        report.benches[bench] = report.benches.get(bench, 0) + count
        if on_progress:
            on_progress(report.routed, total)
    return report


def _run(chunks: list[tuple[str, list[Forced]]], model: str, workers: int, options: dict):
    """(bench, routing rows) per chunk, locally or on `workers` Ray actors, as they finish."""
    if not chunks:
        return
    if workers <= 1:
        router = Router(model, **options)
        try:
            for bench, chunk in chunks:
                yield bench, router.route(chunk)
        finally:
            router.close()
        return
    import ray

    from omk_ray.variants.profile import default_worker_options

    started = not ray.is_initialized()
    if started:
        ray.init(address="local")
    try:
        actor = ray.remote(Router).options(**default_worker_options())
        actors = [actor.remote(model, **options) for _ in range(min(workers, len(chunks)))]
        queue = list(chunks)
        pending = {}
        for a in actors:
            if queue:
                bench, chunk = queue.pop(0)
                pending[a.route.remote(chunk)] = (a, bench)
        while pending:
            [ref], _ = ray.wait(list(pending))
            a, bench = pending.pop(ref)
            if queue:
                next_bench, chunk = queue.pop(0)
                pending[a.route.remote(chunk)] = (a, next_bench)
            yield bench, ray.get(ref)
    finally:
        if started:
            ray.shutdown()

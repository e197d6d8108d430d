"""Bring past runs into a results store, so earlier baselines stand as cohorts next to farm runs.

`import_lmeval(DIR, ...)`: every lm-eval `samples_<task>_<date>.jsonl` under DIR with its
`results_<date>.json`. lm-eval logs one line per doc and filter; omk-ray keeps one row per doc,
all metrics of all filters in the metric map under lm-eval's keys (`exact_match,strict-match`),
`score`/`correct` from the bench's primary metric, `extracted_answer` from that metric's filter,
`domain`/`subdomain` from the doc fields the bench names (GPQA's `High-level domain` and
`Subdomain` by default, see `omk_ray.benches.lmeval.resolve_domain_fields`).

`import_lcb(FILE, ...)`: the upstream LiveCodeBench runner's `*.samples.jsonl` (one line per
problem: task_id, passed, completion, cleaned code, token counts, finish_reason).

Logs without token counts get nulls there and the metric flag `tokens_missing` = 1, so an
analysis knows to estimate tokens from characters (chars / 4). The docs of imported lm-eval
samples are kept next to the samples (`benches/<bench>.docs.jsonl`) with the bench's spec
(`benches/<bench>.json`), so `omk-ray rescore` can score them again without the dataset, with the
prompt lm-eval sent, so `omk-ray route` can teacher-force them.

The bench's spec (its primary metric above all) is recorded per variant (`variants` in
`benches/<bench>.json`): importing one variant never changes how another's rows were scored or are
rescored. A doc already recorded under the same id with other content is refused.

An import is all or nothing: every log is read, checked and turned into rows first (a log that
cannot be imported, a sample logged twice, stops it with nothing written); only then, holding the
results folder's writer lock (`results/folder_lock.py`, as `omk-ray run` does), are the shards and
records written.

The recipe each log ran under is recorded with its import (`recipe` in the variant's entry of
`benches/<bench>.json`, its hash on every row): an lm-eval log's from its config (chat template,
sampler, max_gen_toks, stops); the LCB runner's logs carry none, so its recipe comes from the grid
(`--config`, the variant's recipe for that bench) or `--recipe KEY=VALUE` (which also overrides what a
log says, e.g. `enable_thinking=true`). An import without any is recorded as such (`recipe: null`):
the card then says the comparison's recipe is unknown instead of treating it as like-for-like.

With a grid, tasks of the canonical suite are filed under the grid's bench of their kind with the
farm's ids (`KNOWN_TASKS`: lm-eval's `humaneval_chat` as the grid's `humaneval` bench, ids
`HumanEval/N` from the doc's `task_id`), so imported and farm rows pair.

The variant's facts for the model card (parameters, experts, drop map recipe; see
`omk_ray.variants.facts`) are read at import from the checkpoint folder or hub id given as
`model` (headers only), or from the grid variant of the same name (its `model` and `facts`), and
kept in `variants/<variant>.json`.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from omk_ray.benches.lmeval import (aggregate, finish_aggregate, first_text, metric_values, resolve_domain_fields,
                                   resolve_primary)
from omk_ray.config import BenchSpec, DeclaredFacts, GridConfig, Recipe, stable_hash
from omk_ray.files import write_text_atomic
from omk_ray.results.folder_lock import writing
from omk_ray.results.schema import SAMPLE_SCHEMA, TOKENS_MISSING, make_row, rows_to_table
from omk_ray.results.store import ResultsStore
from omk_ray.variants.facts import Facts, FactsError, checkpoint_facts

# lm-eval tasks of the canonical suite -> (the farm bench kind they are, the doc field holding the farm's id)
KNOWN_TASKS = {
    "humaneval": ("humaneval", "task_id"), "humaneval_chat": ("humaneval", "task_id"),
    "humaneval_instruct": ("humaneval", "task_id"), "humaneval_plus": ("humaneval_plus", "task_id"),
    "humaneval_plus_chat": ("humaneval_plus", "task_id"), "mbpp": ("mbpp", "task_id"),
    "mbpp_chat": ("mbpp", "task_id"), "mbpp_instruct": ("mbpp", "task_id"),
}
SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d{2}-\d{2}T[\d.\-]+)\.jsonl$")
# Scorer used by `rescore` for code tasks imported from lm-eval: run the stored program + tests.
PROGRAM_TESTS = "program_tests"


class LogImportError(ValueError):
    """A log that cannot be imported; the message names the file and the problem."""


@dataclass
class ImportReport:
    bench: str
    task: str
    rows: int
    source: str
    shard: str
    domain_fields: tuple[str | None, str | None] = (None, None)
    with_domain: int = 0  # rows that got a domain or subdomain
    # aggregate key -> (value in the run's own results file, value recomputed from the imported rows)
    aggregates: dict[str, tuple[float, float]] = field(default_factory=dict)

    table: pa.Table | None = field(default=None, repr=False)  # the rows, until written
    spec: BenchSpec | None = field(default=None, repr=False)
    docs: list[dict] = field(default_factory=list, repr=False)
    unit: str = ""
    recipe: Recipe | None = field(default=None, repr=False)  # None: the import recorded none
    recipe_source: str | None = None  # "log", "grid", "log, --recipe", ...
    recipe_unstated: list[str] = field(default_factory=list)  # recipe keys nothing stated (defaults filled in)

    @property
    def reproduced(self) -> bool:
        return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in self.aggregates.values())


# -- lm-eval -------------------------------------------------------------------------------------


def find_lmeval_logs(folder: Path) -> list[tuple[Path, Path, str]]:
    """(samples file, results file, task) for every samples log under `folder`."""
    folder = Path(folder)
    if not folder.exists():
        raise LogImportError(f"{folder}: no such folder")
    found = []
    for samples in sorted(folder.rglob("samples_*.jsonl")):
        match = SAMPLES_NAME.match(samples.name)
        if not match:
            continue
        results = samples.with_name(f"results_{match['stamp']}.json")
        if not results.is_file():
            raise LogImportError(f"{samples}: no matching {results.name} beside it")
        found.append((samples, results, match["task"]))
    if not found:
        raise LogImportError(f"{folder}: no lm-eval samples_<task>_<date>.jsonl files")
    return found


def import_lmeval(
    folder: Path,
    variant: str,
    results_root: Path,
    grid: GridConfig | None = None,
    primary_metrics: dict[str, str] | None = None,
    domain_fields: dict[str, str] | None = None,
    subdomain_fields: dict[str, str] | None = None,
    model: str | None = None,
    revision: str | None = None,
    wait: bool = False,
    recipe: dict[str, Any] | None = None,
) -> list[ImportReport]:
    """Import every lm-eval log under `folder` as `variant`: all of them, or nothing.

    A grid maps tasks to its benches (the bench whose `options.task` names the task, or whose
    name is the task) and supplies their primary metric, doc-id field and domain fields; otherwise
    the bench is named after the task. `primary_metrics` (task or bench -> "metric,filter"),
    `domain_fields` and `subdomain_fields` (task or bench -> doc field) override both. `model`
    (a checkpoint folder or hub id) is where the variant's facts are read. `wait`: wait for the
    writer holding the results folder instead of refusing (FolderBusy). `recipe`: recipe fields that
    override the log's and the grid's (e.g. {"enable_thinking": True}).
    """
    store = ResultsStore(results_root)
    logs = find_lmeval_logs(folder)
    facts = variant_facts(variant, grid, model, revision)  # before anything is written: a bad model stops here
    reports = []
    for samples_path, results_path, task in logs:
        spec = _bench_for_task(task, grid)

        def given(option: dict[str, str] | None) -> str | None:
            return (option or {}).get(task) or (option or {}).get(spec.name)

        named = (("domain_field", given(domain_fields)), ("subdomain_field", given(subdomain_fields)))
        options = {k: v for k, v in named if v}
        spec = spec.model_copy(update={"options": {**spec.options, **options}})
        reports.append(_import_one(store, samples_path, results_path, task, spec, variant, given(primary_metrics),
                                   grid, recipe))
    benches: dict[str, str] = {}
    for r in reports:
        if r.bench in benches:
            raise LogImportError(f"{r.source} and {benches[r.bench]}: both are logs of bench {r.bench!r}; "
                                 "import them one at a time")
        benches[r.bench] = r.source
    with writing(results_root, f"import-lm-eval-{variant}", wait=wait):
        for r in reports:
            _check_docs(store, r)
        _write_reports(store, reports, variant)
        _write_variant_facts(store, variant, facts)
    return reports


def variant_facts(variant: str, grid: GridConfig | None, model: str | None, revision: str | None) -> Facts | None:
    """The facts of an imported variant: from `model` (the Hub too; an error if unreadable), else from the
    grid's variant of that name (its checkpoint if it is here or in the Hugging Face cache, and its `facts`)."""
    spec = next((v for v in grid.variants if v.name == variant), None) if grid else None
    declared: DeclaredFacts | None = spec.facts if spec else None
    if model is not None:
        try:
            return checkpoint_facts(model, revision, online=True).merged(declared)
        except FactsError as err:
            raise LogImportError(f"variant {variant!r}: cannot read its facts from --model: {err}") from None
    if spec is None:
        return None
    try:
        facts = checkpoint_facts(spec.model, spec.revision) if spec.model else Facts()
    except FactsError as err:
        facts = Facts(model=spec.model, source=f"unread: {err}")
    return facts.merged(declared)


def variant_sidecar_path(root: Path, variant: str) -> Path:
    return Path(root) / "variants" / f"{variant}.json"


def _write_variant_facts(store: ResultsStore, variant: str, facts: Facts | None) -> None:
    if facts is None:
        return
    path = variant_sidecar_path(store.root, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"variant": variant, "facts": facts.to_dict()}, indent=2))


def _bench_for_task(task: str, grid: GridConfig | None) -> BenchSpec:
    for b in grid.benches if grid else []:
        if b.options.get("task") == task or (b.name == task and b.kind == "lmeval"):
            return b
    kind, id_field = KNOWN_TASKS.get(task, (None, None))
    for b in grid.benches if grid and kind else []:
        if b.kind == kind:  # the farm's bench of this kind: its name, and the farm's ids
            return b.model_copy(update={"options": {**b.options, "task": task, "id_field": id_field}})
    return BenchSpec(name=task, kind="lmeval", options={"task": task})


def import_recipe(logged: Recipe | None, grid: GridConfig | None, variant: str, bench: str,
                  given: dict[str, Any] | None) -> tuple[Recipe | None, str | None]:
    """(the recipe an import records, where it came from): the log's, else the grid's recipe of `variant` on
    `bench`, with the grid variant's overrides for that bench and then `given` on top; (None, None) when
    nothing tells."""
    spec = next((v for v in grid.variants if v.name == variant), None) if grid else None
    bench_spec = next((b for b in grid.benches if b.name == bench), None) if grid else None
    fields: dict[str, Any] | None = None
    overrides = _grid_overrides(grid, variant, bench)
    sources = []
    if logged is not None:
        fields, sources = logged.model_dump(), ["log"]
    elif grid is not None and bench_spec is not None:
        fields, sources = {**grid.recipe.model_dump(), **bench_spec.recipe}, ["grid"]
    if fields is not None and overrides:
        fields = {**fields, **overrides}
        sources.append("grid override")
    if given:
        fields = {**(fields if fields is not None else Recipe().model_dump()), **given}
        sources.append("--recipe")
    if fields is None:
        return None, None
    try:
        return Recipe(**fields), ", ".join(sources)
    except ValueError as err:
        raise LogImportError(f"recipe of {variant!r} on {bench!r}: {err}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise LogImportError(f"{path}:{n}: not JSON ({err})") from None
            if not isinstance(row, dict):
                raise LogImportError(f"{path}:{n}: a sample must be a JSON object, not {type(row).__name__}")
            rows.append(row)
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LogImportError(f"{path}: not UTF-8 text ({err})") from None


def _read_results(path: Path, task: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(results file, the task's config, the task's logged aggregates), each checked to be what lm-eval writes."""
    try:
        results = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise LogImportError(f"{path}: not JSON ({err})") from None
    if not isinstance(results, dict):
        raise LogImportError(f"{path}: not an lm-eval results file (a JSON {type(results).__name__}, not an object)")
    for key in ("results", "configs", "config", "versions"):
        if not isinstance(results.get(key) or {}, dict):
            raise LogImportError(f"{path}: `{key}` must be an object, not a {type(results[key]).__name__}")
    logged = (results.get("results") or {}).get(task)
    if logged is None:
        raise LogImportError(f"{path}: no results for task {task!r}")
    config = (results.get("configs") or {}).get(task) or {}
    if not isinstance(logged, dict) or not isinstance(config, dict):
        raise LogImportError(f"{path}: the results and configs of task {task!r} must be objects")
    for key, value in logged.items():
        if "," in key and "_stderr" not in key and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise LogImportError(f"{path}: results.{task}.{key} is {value!r}, not a number")
    return results, config, logged


def _import_one(
    store: ResultsStore,
    samples_path: Path,
    results_path: Path,
    task: str,
    spec: BenchSpec,
    variant: str,
    primary: str | None,
    grid: GridConfig | None = None,
    given_recipe: dict[str, Any] | None = None,
) -> ImportReport:
    results, config, logged = _read_results(results_path, task)
    samples = _read_jsonl(samples_path)
    if not samples:
        raise LogImportError(f"{samples_path}: no samples (the file is empty)")

    by_doc: dict[int, list[dict]] = {}
    for s in samples:
        for key in ("doc_id", "doc", "resps", "filtered_resps", "filter", "metrics"):
            if key not in s:
                raise LogImportError(f"{samples_path}: a sample of doc {s.get('doc_id')} has no {key!r}")
        _check_sample(samples_path, s)
        lines = by_doc.setdefault(s["doc_id"], [])
        if any(line["filter"] == s["filter"] for line in lines):
            raise LogImportError(f"{samples_path}: doc {s['doc_id']} is logged twice for filter {s['filter']!r}; "
                                 "nothing was imported")
        lines.append(s)

    metric_keys = [k for k in logged if "," in k and "_stderr" not in k]
    primary = resolve_primary(primary or spec.options.get("primary_metric"), task,
                              {"metric_list": config.get("metric_list"), "filter_list": config.get("filter_list"),
                               "output_type": config.get("output_type")})
    if metric_keys and primary not in metric_keys:
        raise LogImportError(f"{results_path}: primary metric {primary!r} not among {metric_keys}")
    code_task = any(k.startswith("pass@") for k in metric_keys)
    if code_task:
        spec = spec.model_copy(update={"kind": PROGRAM_TESTS, "options": {**spec.options, "task": task}})
    spec = spec.model_copy(update={"options": {**spec.options, "primary_metric": primary}})
    shots = _logged_shots(results_path, results, config, task)
    if shots and spec.kind == "lmeval":  # rescoring rebuilds the bench: the same scorer version, shot count and all
        spec = spec.model_copy(update={"options": {**spec.options, "num_fewshot": shots}})

    recipe, recipe_source = import_recipe(_recipe(results, config, samples[0]), grid, variant, spec.name, given_recipe)
    gen = {**(config.get("generation_kwargs") or {}), **((results.get("config") or {}).get("gen_kwargs") or {})}
    overridden = set(given_recipe or {}) | set(_grid_overrides(grid, variant, spec.name))
    unstated = [k for k in ("max_gen_toks",) if not gen.get(k) and k not in overridden]  # the default filled in
    fingerprint = stable_hash({"imported_from": results.get("model_name"), "variant": variant,
                               "model_args": (results.get("config") or {}).get("model_args")})
    started = _timestamp(results.get("date"))
    scorer = f"lm-eval-{results.get('lm_eval_version')}:{task}@{(results.get('versions') or {}).get(task)}"
    scorer += f":{shots}-shot" if shots else ""  # as the farm's lm-eval benches name it: compare pairs like with like
    dataset = config.get("dataset_path")
    revision = f"{dataset}{'/' + config['dataset_name'] if config.get('dataset_name') else ''}@unrecorded"
    id_field = spec.options.get("id_field")
    primary_filter = primary.split(",", 1)[1]
    fields = _domain_fields(samples_path, task, spec, [lines[0]["doc"] for lines in by_doc.values()])

    rows, docs = [], []
    for doc_id, lines in sorted(by_doc.items()):
        metrics: dict[str, float] = {}
        filtered: dict[str, Any] = {}
        for line in lines:
            filtered[line["filter"]] = line["filtered_resps"]
            for metric in line["metrics"]:
                metrics.update(metric_values(f"{metric},{line['filter']}", line.get(metric)))
        if primary not in metrics:
            raise LogImportError(f"{samples_path}: doc {doc_id} has no {primary!r}")
        metrics[TOKENS_MISSING] = 1.0
        doc = lines[0]["doc"]
        sample_id = str(doc[id_field]) if id_field and doc.get(id_field) is not None else str(doc_id)
        value = metrics[primary]
        rows.append(make_row(
            run_id=f"import-lm-eval-{results_path.stem.removeprefix('results_')}",
            cohort=recipe.cohort,
            variant=variant,
            variant_fingerprint=fingerprint,
            bench=spec.name,
            doc_id=sample_id,
            repeat=0,
            prompt_hash=lines[0].get("prompt_hash"),
            finish_reason=None,
            response=first_text(lines[0]["resps"]),
            extracted_answer=_extracted(filtered.get(primary_filter), lines[0]["resps"]),
            target=None if lines[0].get("target") is None else str(lines[0]["target"]),
            domain=_text(doc.get(fields[0])) if fields[0] else None,
            subdomain=_text(doc.get(fields[1])) if fields[1] else None,
            score=value,
            correct=value >= 1.0,
            metrics=metrics,
            engine="lm-eval-import",
            engine_version=results.get("lm_eval_version"),
            recipe_hash=recipe.hash,
            scorer_version=scorer,
            dataset_revision=revision,
            started_at=started,
        ) | _scored_columns(lines[0], primary, value, config.get("output_type")))
        docs.append({"doc_id": sample_id, "index": doc_id, "doc": doc, "prompt": _logged_prompt(lines[0])})

    report = ImportReport(spec.name, task, len(rows), str(samples_path), "", fields,
                          sum(r["domain"] is not None or r["subdomain"] is not None for r in rows))
    maps = [r["metrics"] for r in rows]
    for key in metric_keys:
        report.aggregates[key] = (float(logged[key]), finish_aggregate(key, aggregate(maps, key)))
    report.table, report.spec, report.docs, report.unit = _table(samples_path, rows), spec, docs, f"import-{task}"
    report.recipe, report.recipe_source, report.recipe_unstated = recipe, recipe_source, unstated
    return report


def _logged_shots(path: Path, results: dict[str, Any], config: dict[str, Any], task: str) -> int:
    """The few-shot examples per context the log's task was asked with (lm-eval's `n-shot`, else the
    task config's `num_fewshot`; none recorded: zero-shot)."""
    value = (results.get("n-shot") or {}).get(task, config.get("num_fewshot"))
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LogImportError(f"{path}: n-shot of task {task!r} is {value!r}, not a count of examples; nothing was imported")
    return value


def _scored_columns(sample: dict, primary: str, value: float, output_type: str | None) -> dict[str, Any]:
    """A loglikelihood task's sample (`resps`: [[logprob, is_greedy]] per request, [[logprob]] for a rolling
    document; lm-eval logs them as strings): the row's choice log-likelihoods, greedy flags, the choice
    picked and no response, as the farm stores them; a rolling document's score is its own value of the
    primary metric (bits per byte). Nothing for a generated sample."""
    if output_type not in ("multiple_choice", "loglikelihood", "loglikelihood_rolling"):
        return {}
    try:
        answers = [r[0] for r in sample["resps"]]
        if output_type == "loglikelihood_rolling":
            return {"choice_logprobs": [float(a) for a in answers], "response": None, "finish_reason": "scored",
                    "score": finish_aggregate(primary, value), "correct": None}
        lls = [float(a[0]) for a in answers]
        greedy = [a[1] is True or a[1] == "True" for a in answers]
    except (TypeError, ValueError, IndexError, KeyError):
        raise LogImportError(f"doc {sample.get('doc_id')}: `resps` are not lm-eval's log-likelihoods "
                             f"of a {output_type} task: {str(sample.get('resps'))[:200]}") from None
    out: dict[str, Any] = {"choice_logprobs": lls, "choice_greedy": greedy, "response": None, "finish_reason": "scored"}
    if output_type == "multiple_choice":  # the pick among the choices (acc_mutual_info's unconditional ones follow)
        n = len(lls) // 2 if "acc_mutual_info" in sample.get("metrics", []) else len(lls)
        out["chosen"] = max(range(n), key=lls.__getitem__)
    return out


def _check_sample(path: Path, s: dict[str, Any]) -> None:
    """The fields of one logged sample have the types lm-eval writes (doc ids are integers)."""
    doc_id = s["doc_id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, int):
        raise LogImportError(f"{path}: doc_id {doc_id!r} is a {type(doc_id).__name__}; "
                             "lm-eval numbers its docs 0, 1, ...")
    if not isinstance(s["doc"], dict):
        raise LogImportError(f"{path}: doc {doc_id}: `doc` must be an object, not a {type(s['doc']).__name__}")
    if not isinstance(s["filter"], str) or not isinstance(s["metrics"], list) \
            or not all(isinstance(m, str) for m in s["metrics"]):
        raise LogImportError(f"{path}: doc {doc_id}: `filter` must be a name and `metrics` a list of names")
    for metric in s["metrics"]:
        value = s.get(metric)
        if value is None or isinstance(value, str):
            raise LogImportError(f"{path}: doc {doc_id}: metric {metric!r} is {value!r}, not a number")


def _domain_fields(samples_path: Path, task: str, spec: BenchSpec, docs: list[dict]) -> tuple[str | None, str | None]:
    """The doc fields of domain and subdomain: the ones named must be in the docs; the task
    family's defaults are used where the docs have them."""
    named = (spec.options.get("domain_field"), spec.options.get("subdomain_field"))
    out = []
    for name, resolved in zip(named, resolve_domain_fields(task, *named)):
        present = resolved is not None and any(resolved in d for d in docs)
        if name and not present:
            known = sorted({k for d in docs for k in d})
            raise LogImportError(f"{samples_path}: no doc has the field {name!r} named for the domain of bench "
                                 f"{spec.name!r} (doc fields: {', '.join(known)})")
        out.append(resolved if present else None)
    return out[0], out[1]


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _logged_prompt(sample: dict) -> str | None:
    """The prompt lm-eval sent (its first request argument): `omk-ray route` teacher-forces it."""
    args = ((sample.get("arguments") or {}).get("gen_args_0") or {}).get("arg_0")
    prompt = args[0] if isinstance(args, list) and args else args
    return prompt if isinstance(prompt, str) else None


def _extracted(filtered: Any, resps: Any) -> str | None:
    """The primary filter's output, or None where it is the response itself (filter `none`)."""
    text = first_text(filtered)
    return None if text == first_text(resps) else text


def _grid_overrides(grid: GridConfig | None, variant: str, bench: str) -> dict[str, Any]:
    """The recipe overrides the grid's variant of that name declares for the bench ("*" first)."""
    spec = next((v for v in grid.variants if v.name == variant), None) if grid else None
    return {**spec.recipe_overrides.get("*", {}), **spec.recipe_overrides.get(bench, {})} if spec else {}


def _recipe(results: dict, config: dict, sample: dict) -> Recipe:
    """The recipe the run used, as far as the log tells, so its hash and cohort mean what a farm run's do."""
    gen = {**(config.get("generation_kwargs") or {}), **((results.get("config") or {}).get("gen_kwargs") or {})}
    prompt = _logged_prompt(sample)
    chat = bool(results.get("chat_template")) or (prompt is not None and prompt.lstrip().startswith("[{"))
    temperature = float(gen.get("temperature", 0.0) or 0.0)
    if gen.get("do_sample") is False:
        temperature = 0.0
    return Recipe(
        chat_template=chat,
        system_prompt=results.get("system_instruction"),
        max_gen_toks=int(gen.get("max_gen_toks") or 256),
        temperature=temperature,
        top_p=float(gen.get("top_p", 1.0) or 1.0),
        top_k=int(gen.get("top_k", 0) or 0),
        stop=tuple(gen.get("until") or ()),
    )


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    except (TypeError, ValueError):
        return None


# -- LiveCodeBench -------------------------------------------------------------------------------


def import_lcb(path: Path, variant: str, results_root: Path, bench: str | None = None, model: str | None = None,
               revision: str | None = None, wait: bool = False, grid: GridConfig | None = None,
               recipe: dict[str, Any] | None = None) -> ImportReport:
    """Import the upstream LCB runner's per-problem samples (FILE.samples.jsonl, or its lcb_result.json):
    all of them or nothing, under the results folder's writer lock. `bench`: the rows' bench (default: the
    grid's livecodebench bench, else lcb_medium). The runner logs no recipe: it is the grid's (the variant's
    recipe on that bench) and/or `recipe`'s fields, else recorded as unknown."""
    path = Path(path)
    if bench is None:
        bench = next((b.name for b in grid.benches if b.kind == "livecodebench"), "lcb_medium") if grid else "lcb_medium"
    facts = variant_facts(variant, grid, model, revision)
    chosen, recipe_source = import_recipe(None, grid, variant, bench, recipe)
    samples_path = path if path.name.endswith(".samples.jsonl") else path.with_name(path.stem + ".samples.jsonl")
    if not samples_path.is_file():
        raise LogImportError(f"{path}: no LiveCodeBench samples file ({samples_path.name})")
    summary_path = samples_path.with_name(samples_path.name.removesuffix(".samples.jsonl") + ".json")
    summary = _read_lcb_summary(summary_path) if summary_path.is_file() else {}
    samples = _read_jsonl(samples_path)
    if not samples:
        raise LogImportError(f"{samples_path}: no samples (the file is empty)")
    model = summary.get("name")
    fingerprint = stable_hash({"imported_from": model, "variant": variant, "runner": "livecodebench"})
    started = datetime.fromtimestamp(samples_path.stat().st_mtime, tz=timezone.utc)
    rows = []
    seen = set()
    for s in samples:
        for key in ("task_id", "passed", "completion"):
            if key not in s:
                raise LogImportError(f"{samples_path}: a sample ({s.get('task_id')}) has no {key!r}")
        if isinstance(s["task_id"], bool) or not isinstance(s["task_id"], (str, int)):
            raise LogImportError(f"{samples_path}: task_id {s['task_id']!r} is not a name")
        if not isinstance(s["passed"], bool) and s["passed"] not in (0, 1):
            raise LogImportError(f"{samples_path}: problem {s['task_id']}: passed is {s['passed']!r}, "
                                 "not true/false")
        if str(s["task_id"]) in seen:
            raise LogImportError(f"{samples_path}: problem {s['task_id']} is logged twice; nothing was imported")
        seen.add(str(s["task_id"]))
        passed = bool(s["passed"])
        tokens = {k: s.get(k) for k in ("prompt_tokens", "completion_tokens")}
        metrics = {"pass@1": float(passed)}
        if any(v is None for v in tokens.values()):
            metrics[TOKENS_MISSING] = 1.0
        rows.append(make_row(
            run_id=f"import-lcb-{samples_path.stem}",
            cohort=chosen.cohort if chosen else "greedy",  # the runner's protocol is greedy
            variant=variant,
            variant_fingerprint=fingerprint,
            bench=bench,
            doc_id=str(s["task_id"]),
            repeat=0,
            **tokens,
            finish_reason=s.get("finish_reason"),
            response=s["completion"],
            extracted_answer=s.get("cleaned"),
            score=float(passed),
            correct=passed,
            metrics=metrics,
            latency_s=s.get("gen_secs"),
            engine="lcb-import",
            recipe_hash=chosen.hash if chosen else None,
            scorer_version="lcb-runner",
            dataset_revision="livecodebench/code_generation_lite@unrecorded",
            started_at=started,
        ))
    report = ImportReport(bench, "livecodebench", len(rows), str(samples_path), "")
    if "pass_at_1" in summary:
        report.aggregates["pass@1"] = (float(summary["pass_at_1"]), aggregate([r["metrics"] for r in rows], "pass@1"))
    # Rescoring runs the problems' tests again: the livecodebench bench (its data from the cache).
    report.table, report.spec, report.unit = _table(samples_path, rows), BenchSpec(name=bench, kind="livecodebench"), \
        "import-lcb"
    report.recipe, report.recipe_source = chosen, recipe_source
    store = ResultsStore(results_root)
    with writing(results_root, f"import-lcb-{variant}", wait=wait):
        _write_reports(store, [report], variant)
        _write_variant_facts(store, variant, facts)
    return report


def _read_lcb_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise LogImportError(f"{path}: not JSON ({err})") from None
    if not isinstance(summary, dict):
        raise LogImportError(f"{path}: not an LCB summary (a JSON {type(summary).__name__}, not an object)")
    value = summary.get("pass_at_1")
    if "pass_at_1" in summary and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise LogImportError(f"{path}: pass_at_1 is {value!r}, not a number")
    return summary


# -- writing -------------------------------------------------------------------------------------


def _table(source: Path, rows: list[dict]) -> pa.Table:
    try:
        return rows_to_table(rows)
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise LogImportError(f"{source}: its samples do not fit the sample schema ({err}); "
                             "nothing was imported") from None


def _write_reports(store: ResultsStore, reports: list[ImportReport], variant: str) -> None:
    """Write prepared logs, all or none: every shard is first written aside (`.part-*.staged`, which no
    reader takes), so a full disk or any other failure stops before one is in place; then each is
    renamed into place (replacing the shard an earlier import of the same log left) and its bench's
    record for `variant` is written."""
    staged: list[tuple[ImportReport, Path, Path]] = []
    try:
        for r in reports:
            folder = store.samples_dir / variant / r.bench
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{r.unit}-{uuid.uuid4().hex[:8]}.parquet"
            staged.append((r, folder / f".{final.name}.staged", final))
            pq.write_table(r.table.cast(SAMPLE_SCHEMA), staged[-1][1])
    except BaseException:
        for _, aside, _ in staged:
            aside.unlink(missing_ok=True)
        raise
    for r, aside, final in staged:
        old = sorted(final.parent.glob(f"part-{r.unit}-*.parquet"))
        os.replace(aside, final)
        for p in old:
            p.unlink()
        r.shard = str(final)
        recipe = None if r.recipe is None else {**r.recipe.model_dump(mode="json"), "source": r.recipe_source,
                                                "unstated": r.recipe_unstated}
        _write_bench_sidecar(store, r.spec, r.docs, source=r.source, variant=variant, recipe=recipe)
        r.table = None


def bench_sidecar_paths(root: Path, bench: str) -> tuple[Path, Path]:
    folder = Path(root) / "benches"
    return folder / f"{bench}.json", folder / f"{bench}.docs.jsonl"


def read_bench_record(root: Path, bench: str) -> dict[str, Any]:
    """`benches/<bench>.json`: {"spec": the first import's spec, "imported_from", "variants": {variant:
    {"spec", "imported_from"}}} (records written before `variants` existed: the spec holds for all)."""
    spec_path, _ = bench_sidecar_paths(root, bench)
    if not spec_path.is_file():
        return {}
    try:
        record = json.loads(spec_path.read_text())
    except (OSError, ValueError) as err:
        raise LogImportError(f"{spec_path}: unreadable bench record ({err})") from None
    return record if isinstance(record, dict) else {}


def variant_bench_specs(root: Path) -> dict[tuple[str, str], BenchSpec]:
    """(variant, bench) -> the spec its imported rows were scored under."""
    folder = Path(root) / "benches"
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_bench_record(root, path.stem)
        try:
            for variant, entry in (record.get("variants") or {}).items():
                spec = BenchSpec(**entry["spec"])
                out[(variant, spec.name)] = spec
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise LogImportError(f"{path}: not a bench record ({type(err).__name__}: {err})") from None
    return out


def imported_recipes(root: Path) -> dict[tuple[str, str], dict | None]:
    """(variant, bench) -> the recipe its import recorded (with `source`), None where it recorded none;
    imports written before recipes were recorded are left out (unknown)."""
    folder = Path(root) / "benches"
    out: dict[tuple[str, str], dict | None] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_bench_record(root, path.stem)
        for variant, entry in (record.get("variants") or {}).items():
            if isinstance(entry, dict) and "recipe" in entry:
                out[(variant, path.stem)] = entry["recipe"]
    return out


def _shown(root: Path, source: str) -> str:
    """A log's path as recorded: relative to the results folder where it lies inside, else its last two parts
    (no machine's folders in what a report may show)."""
    path = Path(source)
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(Path(*path.parts[-2:]))


def _check_docs(store: ResultsStore, report: ImportReport) -> None:
    """Refuse docs recorded already under the same ids with other content (another dataset, another version)."""
    _, docs_path = bench_sidecar_paths(store.root, report.bench)
    if not report.docs or not docs_path.is_file():
        return
    known = {d["doc_id"]: d["doc"] for d in _read_jsonl(docs_path)}
    other = [d["doc_id"] for d in report.docs if d["doc_id"] in known and known[d["doc_id"]] != d["doc"]]
    if other:
        raise LogImportError(
            f"{report.source}: {len(other)} docs of bench {report.bench!r} (ids {', '.join(other[:5])}) differ from "
            f"the docs already recorded under those ids in {docs_path}; import them as another bench (a grid "
            "given with --config names it); nothing was imported")


def _write_bench_sidecar(store: ResultsStore, spec: BenchSpec, docs: list[dict], source: str, variant: str,
                         recipe: dict | None = None) -> None:
    spec_path, docs_path = bench_sidecar_paths(store.root, spec.name)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"spec": spec.model_dump(mode="json"), "imported_from": _shown(store.root, source), "recipe": recipe}
    record = read_bench_record(store.root, spec.name) or dict(entry)
    record["variants"] = {**(record.get("variants") or {}), variant: entry}
    write_text_atomic(spec_path, json.dumps(record, indent=2))
    if not docs:
        return
    known = {}
    if docs_path.is_file():
        known = {d["doc_id"]: d for d in _read_jsonl(docs_path)}
    known.update({d["doc_id"]: d for d in docs if d["doc_id"] not in known})
    write_text_atomic(docs_path, "".join(json.dumps(d) + "\n" for d in known.values()))

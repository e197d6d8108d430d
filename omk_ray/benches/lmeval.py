"""Any lm-evaluation-harness task as a bench: lm-eval builds the prompts and scores, omk-ray generates
(or scores text, for lm-eval's loglikelihood tasks).

    - name: gsm8k
      kind: lmeval
      subset: 100
      options:
        task: gsm8k                              # built in, omk-ray's own (_data/lmeval_tasks/), or yours:
        include_path: [my_tasks/]                # folders of task YAMLs, searched first
        primary_metric: exact_match,flexible-extract   # "metric,filter" as in lm-eval's results
        id_field: null                           # doc id: this field of the raw row, else the row index

Prompts come from the task's own `doc_to_text` / `description` / `gen_prefix`, zero-shot, as chat
messages (the engine applies the model's chat template). Scores come from the task's own
filter ensembles and `process_results` / metric functions, applied to omk-ray's response
exactly as lm-eval's evaluator applies them, so per-sample scores equal lm-eval's on the same
response. Every metric of every filter lands in the row's metric map under lm-eval's own key
`metric,filter`; `score` is the primary one. A list-valued metric (IFEval's instruction-level
accuracy) is stored as its mean plus `metric,filter/n`, the list's length, so that
`aggregate` reproduces lm-eval's flattened mean.

Loglikelihood tasks (`output_type` multiple_choice, loglikelihood, loglikelihood_rolling): the
document's requests are lm-eval's own (`construct_requests` on the zero-shot plain-text context,
no chat template, as `lm_eval --model hf` without `--apply_chat_template`); the engine scores them
(`Doc.scoring`, engines/scoring.py) and the (log-likelihood, is_greedy) pairs go through the
task's filters and `process_results` as in lm-eval's evaluator: acc, acc_norm, exact_match ...
per document, `chosen` the choice of highest log-likelihood. A perplexity metric's per-document
pair (log-likelihood, words or bytes) is stored as the log-likelihood per word or byte under the
metric's key with the count under `/n`, so that the weighted mean (`aggregate`) turned back by
`finish_aggregate` is lm-eval's corpus value (word/byte perplexity: exp(-mean), bits per byte:
-mean / ln 2); a rolling document's `score` is its own bits per byte.

Data: `source: file.jsonl|parquet` overrides everything; a task whose YAML loads local files
(`dataset_path: json` + `dataset_kwargs: {data_files: ...}`) is read as is; a hub dataset is
read from the cache that `omk-ray fetch-data` fills (see `omk_ray.benches.sources`).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field, field_validator

from omk_ray.benches import sources
from omk_ray.benches.base import Bench, BenchOptions, Doc, Score
from omk_ray.config import BenchSpec
from omk_ray.engines.base import Completion
from omk_ray.engines.scoring import Scoring

OWN_TASKS = Path(__file__).parents[1] / "_data" / "lmeval_tasks"
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}
SPLIT = "omk"

# The headline metric of tasks whose first metric is not the one to report.
PRIMARY_METRICS = {
    "gsm8k": "exact_match,flexible-extract",
    "minerva_math500": "math_verify,none",
    "ifeval": "prompt_level_strict_acc,none",
    "gpqa_diamond_cot_zeroshot": "exact_match,flexible-extract",
    "humaneval_chat": "pass@1,extract_chat",
}
# The doc fields that hold a problem's domain and subdomain, per task family (a task named
# `<family>` or `<family>_...`); a bench's `domain_field` / `subdomain_field` options override them.
DOMAIN_FIELDS = {"gpqa": ("High-level domain", "Subdomain")}
SCORING_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")  # lm-eval's loglikelihood tasks
OUTPUT_TYPES = ("generate_until", *SCORING_TYPES)
# Metrics whose per-document value is (log-likelihood, count): stored as log-likelihood per unit, /n the count.
PERPLEXITIES = {"word_perplexity", "byte_perplexity", "bits_per_byte"}
# NLTK data some built-in tasks need at scoring time (fetched by `omk-ray fetch-data`).
NLTK_NEEDS = {"ifeval": ("punkt_tab",)}


class LmEvalOptions(BenchOptions):
    task: str
    include_path: tuple[str, ...] = ()
    split: str | None = Field(None, description="default: the task's test split, else its validation split")
    primary_metric: str | None = Field(None, description='"metric,filter" (a bare metric means filter "none")')
    id_field: str | None = None
    domain_field: str | None = None
    subdomain_field: str | None = None
    num_fewshot: int = Field(0, ge=0, le=0, description="omk-ray asks zero-shot only")
    seed: int = Field(0, description="seeds `random` for the task's process_docs (as lm-eval's random_seed) "
                                     "and for each sample's scoring")
    nltk: tuple[str, ...] | None = Field(None, description="NLTK resources the scorer needs (default: known tasks)")

    @field_validator("include_path", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class LmEvalBench(Bench):
    Options = LmEvalOptions

    def __init__(self, spec: BenchSpec):
        super().__init__(spec)
        self._revision: str | None = spec.revision
        self._scoring_task = None
        self.cache = sources.default_cache()  # where `omk-ray fetch-data` put hub data and NLTK resources

    # -- the task definition ---------------------------------------------------------------

    @functools.cached_property
    def yaml_path(self) -> Path:
        return find_task_yaml(self.options.task, self.search_paths)

    @property
    def search_paths(self) -> tuple[str, ...]:
        return (*(str(Path(p).expanduser().resolve()) for p in self.options.include_path), str(OWN_TASKS))

    @property
    def nltk_resources(self) -> tuple[str, ...]:
        if self.options.nltk is not None:
            return self.options.nltk
        return next((need for key, need in NLTK_NEEDS.items() if key in self.yaml_path.parts), ())

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        for resource in self.nltk_resources:  # before the task's code is imported: it downloads otherwise
            sources.require_nltk(resource, f"bench {self.spec.name!r} (lm-eval task {self.options.task})", self.cache)
        return load_task_config(self.yaml_path)

    @functools.cached_property
    def filters(self) -> list:
        return build_filters(self.config)

    @property
    def split(self) -> str:
        cfg = self.config
        split = self.options.split or cfg.get("test_split") or cfg.get("validation_split")
        if not split:
            raise ValueError(f"bench {self.spec.name!r}: task {self.options.task} names no test or validation split")
        return split

    @property
    def primary_metric(self) -> str:
        return resolve_primary(self.options.primary_metric, self.options.task, self.config)

    @property
    def output_type(self) -> str:
        return self.config.get("output_type", "generate_until")

    @property
    def scores_text(self) -> bool:  # type: ignore[override]
        return self.output_type in SCORING_TYPES

    @property
    def scorer_version(self) -> str:  # type: ignore[override]
        import lm_eval

        version = (self.config.get("metadata") or {}).get("version")
        return f"lm-eval-{lm_eval.__version__}:{self.options.task}@{version}"

    @property
    def dataset_revision(self) -> str | None:
        return self._revision

    # -- data ------------------------------------------------------------------------------

    def hub_split(self) -> sources.HubSplit | None:
        if sources.is_local_source(self.spec.source) or self.config.get("dataset_path") in LOCAL_BUILDERS:
            return None
        path = self.spec.source or self.config.get("dataset_path")
        if not path:
            raise ValueError(f"bench {self.spec.name!r}: task {self.options.task} has no dataset_path")
        return sources.HubSplit(path, self.config.get("dataset_name"), self.split, self.spec.revision)

    def records(self) -> sources.Records:
        if sources.is_local_source(self.spec.source):
            return sources.read_local(self.spec.source)
        cfg = self.config
        if cfg.get("dataset_path") in LOCAL_BUILDERS:
            import datasets

            kwargs = dict(cfg.get("dataset_kwargs") or {})
            if "data_files" in kwargs:  # relative to the task's YAML (omk-ray's own tasks ship their data)
                kwargs["data_files"] = beside(self.yaml_path.parent, kwargs["data_files"])
            with _quiet():
                splits = datasets.load_dataset(cfg["dataset_path"], cfg.get("dataset_name"), **kwargs)
            if self.split not in splits:
                raise ValueError(f"bench {self.spec.name!r}: the task's local data has splits {list(splits)}, "
                                 f"not {self.split!r}")
            return sources.Records(splits[self.split].to_list(), f"local:{kwargs.get('data_files')}")
        return sources.read_cached(self.hub_split(), self.cache)

    def fetch_data(self, cache: Path) -> list[str]:
        """Download what the bench needs into `cache`; one line per thing done."""
        self.cache = Path(cache)
        done = []
        for resource in self.nltk_resources:
            done.append(f"nltk {resource}: {sources.fetch_nltk(resource, cache)}")
        ref = self.hub_split()
        if ref is None:
            n = len(self.records().rows)
            done.append(f"local data: {n} rows")
        else:
            import os

            try:
                meta = sources.fetch_split(ref, cache, token=os.environ.get("HF_TOKEN"))
            except sources.DataError as err:  # say what was done before the split failed
                raise sources.DataError("; ".join([*done, f"dataset: {err}"])) from None
            state = "cached" if meta.get("cached") else "fetched"
            done.append(f"{ref.label}@{meta['revision']}: {meta['rows']} rows ({state})")
        return done

    def load_docs(self) -> list[Doc]:
        records = self.records()
        self._revision = records.revision
        if not records.rows:
            raise ValueError(f"bench {self.spec.name!r}: no rows in {records.revision}")
        with seeded_random(self.options.seed):  # process_docs may shuffle (GPQA's choices)
            task = make_task(self.config, records.rows, processed=False)
        docs = list(task.task_docs)
        raw = records.rows
        if len(docs) != len(raw):
            if self.options.id_field or self.options.domain_field or self.options.subdomain_field:
                raise ValueError(
                    f"bench {self.spec.name!r}: the task's process_docs changed the row count ({len(raw)} -> "
                    f"{len(docs)}), so id/domain fields of the raw rows cannot be matched"
                )
            raw = []  # the task family's domain fields are then read from the processed docs only
        return [self._doc(task, i, doc, raw[i] if i < len(raw) else {}) for i, doc in enumerate(docs)]

    @property
    def domain_fields(self) -> tuple[str | None, str | None]:
        return resolve_domain_fields(self.options.task, self.options.domain_field, self.options.subdomain_field)

    def _doc(self, task, index: int, doc: dict, raw: dict) -> Doc:
        opts = self.options
        domain_field, subdomain_field = self.domain_fields

        def field(name: str | None) -> str | None:
            if not name:
                return None
            value = doc.get(name, raw.get(name))
            return None if value is None else str(value)

        if self.scores_text:
            scoring = Scoring(**scoring_request(task, doc, index))
            shown = scoring.rolling if scoring.rolling is not None else scoring.pairs[0][0]
            messages = [{"role": "user", "content": shown}]  # shown only: the engine scores `scoring`
            target = None if scoring.rolling is not None else doc_target(task, doc)
        else:
            scoring, messages, target = None, prompt_messages(task, doc), doc_target(task, doc)
        return Doc(
            id=field(opts.id_field) or str(index),
            messages=messages,
            target=target,
            domain=field(domain_field),
            subdomain=field(subdomain_field),
            meta={"doc": doc, "index": index},
            scoring=scoring,
        )

    # -- scoring ---------------------------------------------------------------------------

    def score(self, doc: Doc, completion: Completion) -> Score:
        if self.scores_text:
            if completion.loglikelihoods is None:
                raise ValueError("the engine returned no log-likelihoods for a scoring request")
            return self.score_loglikelihoods(doc.meta["doc"], completion.loglikelihoods, doc.meta.get("index", 0))
        return self.score_text(doc.meta["doc"], completion.text)

    def score_loglikelihoods(self, lm_doc: dict, results: list[tuple[float, bool]], index: int = 0) -> Score:
        """lm-eval's per-document metrics of a loglikelihood task from its requests' (log-likelihood, is_greedy)."""
        if self._scoring_task is None:
            self._scoring_task = make_task(self.config, [lm_doc], processed=True)
        metrics, chosen = score_loglikelihoods(self._scoring_task, self.filters, lm_doc, results, index)
        return loglikelihood_score(self._scoring_task, lm_doc, metrics, chosen, self.primary_metric)

    def score_text(self, lm_doc: dict, response: str) -> Score:
        if self._scoring_task is None:
            self._scoring_task = make_task(self.config, [lm_doc], processed=True)
        metrics, filtered = score_response(self._scoring_task, self.filters, lm_doc, response, self.options.seed)
        return to_score(metrics, filtered, self.primary_metric, response)


# -- lm-eval plumbing --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def find_task_yaml(task: str, search_paths: tuple[str, ...]) -> Path:
    """The YAML that defines `task`: the given folders first (in order), then lm-eval's own tasks.

    A file named after the task is tried first (most are); otherwise lm-eval's task index is
    built (10-15 s for the built-in tasks), once per process.
    """
    import lm_eval

    builtin = str(Path(lm_eval.__file__).parent / "tasks")
    for folder in (*search_paths, builtin):
        for candidate in sorted(Path(folder).rglob(f"{task}.yaml")):
            if _yaml_task_name(candidate) == task:
                return candidate
    from lm_eval.tasks import TaskManager

    with _quiet():
        index = TaskManager(include_path=list(search_paths)).task_index
    entry = index.get(task)
    if entry is None or entry.yaml_path is None:
        import difflib

        close = difflib.get_close_matches(task, list(index), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"lm-eval task {task!r} not found (searched {', '.join(search_paths)} and lm-eval's tasks){hint}")
    return Path(entry.yaml_path)


def _yaml_task_name(path: Path) -> str | None:
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        return load_yaml(path, resolve_func=False, recursive=False).get("task")
    except Exception:  # noqa: BLE001 - a broken unrelated YAML is simply not our task
        return None


@functools.lru_cache(maxsize=None)
def _load_yaml_cached(path: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(path, resolve_func=True)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    return cfg


def load_task_config(path: Path) -> dict[str, Any]:
    cfg = _load_yaml_cached(Path(path))
    if cfg.get("output_type", "generate_until") not in OUTPUT_TYPES:
        raise ValueError(
            f"lm-eval task {cfg.get('task')}: output_type {cfg['output_type']!r} is not one omk-ray runs "
            f"({', '.join(OUTPUT_TYPES)})"
        )
    return dict(cfg)


def make_task(cfg: dict[str, Any], rows: list[dict], processed: bool):
    """An lm-eval ConfigurableTask over in-memory rows (no hub access), zero-shot.

    `processed=True`: the rows already went through the task's process_docs (scoring).
    """
    from datasets import Dataset, DatasetDict
    from lm_eval.api.task import ConfigurableTask

    cfg = dict(cfg)
    cfg.update(
        dataset_path=None,
        dataset_name=None,
        dataset_kwargs=None,
        custom_dataset=lambda **_: DatasetDict({SPLIT: Dataset.from_list(list(rows))}),
        training_split=None,
        validation_split=None,
        test_split=SPLIT,
        fewshot_split=None,
        fewshot_config=None,
        num_fewshot=0,
    )
    if processed:
        cfg["process_docs"] = None
    _reuse_compiled_templates()
    with _quiet():
        return ConfigurableTask(config=cfg)


def _reuse_compiled_templates() -> None:
    """lm-eval compiles a task's Jinja templates again for every doc (~7 ms each, 25 s for
    ARC's 1172 prompts here); compiled templates are immutable, so compile each once."""
    import lm_eval.utils

    env = lm_eval.utils.env
    if not hasattr(env.from_string, "cache_info"):
        env.from_string = functools.lru_cache(maxsize=1024)(env.from_string)


def _messages_only(messages: list[dict], add_generation_prompt: bool = True) -> list[dict]:
    return messages


def prompt_messages(task, doc: dict) -> list[dict[str, str]]:
    """The chat messages lm-eval would send for `doc` (system description, user turn, gen prefix)."""
    messages = task.fewshot_context(
        doc=doc,
        num_fewshot=0,
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        chat_template=_messages_only,
        gen_prefix=task.doc_to_prefix(doc),
    )
    if messages and messages[-1]["role"] == "assistant":
        raise ValueError(
            f"lm-eval task {task.config.task}: its gen_prefix makes the prompt end in an assistant turn "
            f"to continue, which omk-ray's engines do not do yet"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def doc_target(task, doc: dict) -> str:
    target = task.doc_to_target(doc)
    if task.config.doc_to_choice is not None and isinstance(target, int):
        target = task.doc_to_choice(doc)[target]
    return str(target)


def beside(folder: Path, files: Any) -> Any:
    """`data_files` with relative paths made relative to `folder` (where they exist there)."""
    if isinstance(files, dict):
        return {k: beside(folder, v) for k, v in files.items()}
    if isinstance(files, (list, tuple)):
        return [beside(folder, f) for f in files]
    path = Path(str(files))
    return str(folder / path) if not path.is_absolute() and (folder / path).exists() else files


def task_requests(task, doc: dict, index: int = 0) -> list:
    """lm-eval's request instances of one document (zero-shot, plain text), as its evaluator builds them."""
    ctx = task.fewshot_context(doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
    instances = task.construct_requests(doc=doc, ctx=ctx, metadata=(task.config.task, index, 1))
    return instances if isinstance(instances, list) else [instances]


def scoring_request(task, doc: dict, index: int = 0) -> dict[str, Any]:
    """A document's scoring request (`Scoring` fields): its (context, continuation) pairs, or its rolling text."""
    instances = task_requests(task, doc, index)
    if task.OUTPUT_TYPE == "loglikelihood_rolling":
        return {"rolling": instances[0].args[0]}
    return {"pairs": tuple((i.args[0], i.args[1]) for i in instances)}


def score_loglikelihoods(task, filters: list, doc: dict, results: list[tuple[float, bool]],
                         index: int = 0) -> tuple[dict[str, float], int | None]:
    """lm-eval's per-document metrics from the scored requests (filters, then process_results), and the
    choice picked (multiple choice: the highest log-likelihood among the choices)."""
    instances = task_requests(task, doc, index)
    if len(instances) != len(results):
        raise ValueError(f"{len(results)} log-likelihoods for a document of {len(instances)} requests")
    rolling = task.OUTPUT_TYPE == "loglikelihood_rolling"
    for instance, (ll, greedy) in zip(instances, results):
        instance.resps = [float(ll)] if rolling else [(float(ll), bool(greedy))]
    for ensemble in filters:
        ensemble.apply(instances)
    metrics: dict[str, float] = {}
    for name in instances[0].filtered_resps:
        for metric, value in task.process_results(doc, [i.filtered_resps[name] for i in instances]).items():
            metrics.update(metric_values(f"{metric},{name}", value))
    chosen = None
    if task.OUTPUT_TYPE == "multiple_choice":
        n = len(task.doc_to_choice(doc))
        lls = [r[0] for r in results[:n]]
        chosen = max(range(n), key=lls.__getitem__)  # np.argmax's pick: the first of equal maxima
    return metrics, chosen


def loglikelihood_score(task, doc: dict, metrics: dict[str, float], chosen: int | None, primary: str) -> Score:
    if task.OUTPUT_TYPE == "loglikelihood_rolling":
        value = metrics.get(primary)
        if value is None:
            raise ValueError(f"primary metric {primary!r} not among the task's metrics {sorted(metrics)}")
        return Score(score=finish_aggregate(primary, value), correct=None, metrics=metrics)  # type: ignore[arg-type]
    score = to_score(metrics, {}, primary)
    if chosen is not None:
        score.chosen = chosen
        score.extracted = str(task.doc_to_choice(doc)[chosen])
    return score


def finish_aggregate(key: str, mean: float) -> float:
    """lm-eval's aggregate from the weighted mean `aggregate` gives: perplexities from the mean
    log-likelihood per unit (exp(-mean)), bits per byte (-mean / ln 2); other metrics as they are."""
    metric = key.split(",", 1)[0]
    if metric in ("word_perplexity", "byte_perplexity", "perplexity"):
        return math.exp(-mean)
    if metric == "bits_per_byte":
        return -mean / math.log(2)
    return mean


def build_filters(cfg: dict[str, Any]) -> list:
    from lm_eval.filters import build_filter_ensemble

    filter_list = cfg.get("filter_list")
    if not filter_list:
        return [build_filter_ensemble("none", [("take_first", None)])]
    return [
        build_filter_ensemble(
            f["name"], [(step["function"], {k: v for k, v in step.items() if k != "function"}) for step in f["filter"]]
        )
        for f in filter_list
    ]


def score_response(
    task, filters: list, doc: dict, response: str, seed: int = 0
) -> tuple[dict[str, float], dict[str, Any]]:
    """lm-eval's per-sample metrics of one response: every filter ensemble, then process_results."""
    from lm_eval.api.instance import Instance

    instance = Instance("generate_until", doc, ("", {}), 0, resps=[response])
    for ensemble in filters:
        ensemble.apply([instance])
    metrics: dict[str, float] = {}
    try:
        with seeded_random(seed):
            for name, filtered in instance.filtered_resps.items():
                for metric, value in task.process_results(doc, [filtered]).items():
                    metrics.update(metric_values(f"{metric},{name}", value))
    except LookupError as err:  # an NLTK resource missing: say how to get it
        raise sources.DataError(f"scoring needs NLTK data that is missing ({str(err).strip().splitlines()[0]}); "
                                f"run `omk-ray fetch-data CONFIG` and set {sources.CACHE_ENV}") from None
    return metrics, instance.filtered_resps


@contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """Some scorers are random: IFEval picks a random letter when an instruction's letter is not
    a-z, and its language check (langdetect) samples anew on every call, so on mixed-language
    text lm-eval's own score of a sample changes from run to run. Seeding both per sample makes
    omk-ray's score reproducible; the previous state is restored."""
    state = random.getstate()
    random.seed(seed)
    try:
        from langdetect import DetectorFactory
    except ImportError:
        DetectorFactory = None
    old_seed = DetectorFactory.seed if DetectorFactory else None
    if DetectorFactory:
        DetectorFactory.seed = seed
    try:
        yield
    finally:
        random.setstate(state)
        if DetectorFactory:
            DetectorFactory.seed = old_seed


def metric_values(key: str, value: Any) -> dict[str, float]:
    """One lm-eval per-sample metric as map entries: numbers and bools as floats, lists as mean + /n,
    a perplexity's (log-likelihood, count) as log-likelihood per unit + /n (see the module's doc)."""
    if key.split(",", 1)[0] in PERPLEXITIES and isinstance(value, (list, tuple)) and len(value) == 2:
        ll, count = float(value[0]), float(value[1])
        return {key: ll / count if count else math.nan, f"{key}/n": count}
    if isinstance(value, (bool, int, float)):
        return {key: float(value)}
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float)) for v in value):
        return {key: (sum(map(float, value)) / len(value)) if value else math.nan, f"{key}/n": float(len(value))}
    return {}  # corpus-level inputs (e.g. BLEU's (ref, pred) pairs) have no per-sample value


def aggregate(metric_maps: list[dict[str, float]], key: str) -> float:
    """lm-eval's aggregate of one metric over samples: the mean, weighted by `/n` for list metrics."""
    weights = [m.get(f"{key}/n", 1.0) for m in metric_maps]
    values = [m[key] for m in metric_maps]
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total else math.nan


def resolve_primary(primary: str | None, task: str, cfg: dict[str, Any] | None = None) -> str:
    if primary:
        return primary if "," in primary else f"{primary},none"
    if task in PRIMARY_METRICS:
        return PRIMARY_METRICS[task]
    cfg = cfg or {}
    names = [m.get("metric") for m in cfg.get("metric_list") or []]
    preferred = {"loglikelihood_rolling": "bits_per_byte", "loglikelihood": "acc"}.get(cfg.get("output_type", ""))
    if preferred in names:  # a loglikelihood task's headline: bits per byte, or acc (is_greedy)
        return f"{preferred},none"
    metric = ((cfg.get("metric_list") or [{}])[0]).get("metric", "exact_match")
    filters = cfg.get("filter_list") or [{"name": "none"}]
    return f"{metric if isinstance(metric, str) else metric.__name__},{filters[0]['name']}"


def resolve_domain_fields(task: str, domain_field: str | None = None,
                          subdomain_field: str | None = None) -> tuple[str | None, str | None]:
    """The doc fields holding a problem's domain and subdomain: the ones named, else the task family's."""
    family = next((f for name, f in DOMAIN_FIELDS.items() if task == name or task.startswith(f"{name}_")), (None, None))
    return domain_field or family[0], subdomain_field or family[1]


def to_score(metrics: dict[str, float], filtered: dict[str, Any], primary: str, response: str | None = None) -> Score:
    """`extracted` is the primary filter's output, or None where that is the response itself."""
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} not among the task's metrics {sorted(metrics)}")
    value = metrics[primary]
    extracted = first_text(filtered.get(primary.split(",", 1)[1]))
    if extracted == response:
        extracted = None
    return Score(score=value, correct=value >= 1.0, extracted=extracted, metrics=metrics)


def first_text(value: Any) -> str | None:
    """A filtered response as text: lm-eval keeps a string, or a list of them per repeat."""
    while isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    return None if value is None else str(value)


@contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval and datasets log a warning per task build; keep a run's log readable."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

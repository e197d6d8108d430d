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
        num_fewshot: 5                           # examples per context (default 0; "task": the YAML's)

Prompts come from the task's own `doc_to_text` / `description` / `gen_prefix`, as chat
messages (the engine applies the model's chat template); few-shot examples are earlier turns
(lm-eval's `fewshot_as_multiturn`, its default with a chat template). Scores come from the task's own
filter ensembles and `process_results` / metric functions, applied to omk-ray's response
exactly as lm-eval's evaluator applies them, so per-sample scores equal lm-eval's on the same
response. Every metric of every filter lands in the row's metric map under lm-eval's own key
`metric,filter`; `score` is the primary one. A list-valued metric (IFEval's instruction-level
accuracy) is stored as its mean plus `metric,filter/n`, the list's length, so that
`aggregate` reproduces lm-eval's flattened mean.

Loglikelihood tasks (`output_type` multiple_choice, loglikelihood, loglikelihood_rolling): the
document's requests are lm-eval's own (`construct_requests` on the plain-text context, no chat
template, as `lm_eval --model hf` without `--apply_chat_template`); the engine scores them
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

Few-shot (`num_fewshot` > 0): each document's examples are those `lm_eval --num_fewshot N` puts in
its context, drawn by the task's own sampler from the task's own few-shot docs (its
`fewshot_split` / `fewshot_config`, else its training, validation, test split, as lm-eval picks)
seeded with `fewshot_seed` (lm-eval's `fewshot_random_seed`, 1234). lm-eval's sampler draws for
one document after another in the split's order, so a document's examples depend on the
documents before it: the contexts are built for every document of the split in that order when
the docs load, whatever subset, shard or resume then asks for (lm-eval's `--limit N` contexts are
the first N of them). The shot count is part of every scoring pair or prompt, hence of the
document's hash (a resume asks again) and of the scorer version (`...@1.0:5-shot`).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

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
DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's fewshot_random_seed
FEWSHOT = "omk_fewshot"  # the in-memory split that holds a task's few-shot docs
# A task YAML's `metadata` key (omk-ray's): the row field whose values split the task into the tasks
# lm-eval would run one by one for few-shot contexts (mmlu_all: `subject`, as lm-eval's 57 mmlu_* tasks).
FEWSHOT_BY = "omk_fewshot_by"


class LmEvalOptions(BenchOptions):
    task: str
    include_path: tuple[str, ...] = ()
    split: str | None = Field(None, description="default: the task's test split, else its validation split")
    primary_metric: str | None = Field(None, description='"metric,filter" (a bare metric means filter "none")')
    id_field: str | None = None
    domain_field: str | None = None
    subdomain_field: str | None = None
    num_fewshot: int | Literal["task"] = Field(
        0, description='examples in each context, as lm-eval\'s --num_fewshot; "task": the task YAML\'s own '
                       "num_fewshot (lm-eval's choice when --num_fewshot is not given), else 0")
    fewshot_seed: int = Field(DEFAULT_FEWSHOT_SEED, description="seeds the task's few-shot sampler "
                                                                "(lm-eval's fewshot_random_seed)")
    seed: int = Field(0, description="seeds `random` for the task's process_docs (as lm-eval's random_seed) "
                                     "and for each sample's scoring")
    nltk: tuple[str, ...] | None = Field(None, description="NLTK resources the scorer needs (default: known tasks)")

    @field_validator("num_fewshot")
    @classmethod
    def _not_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("num_fewshot must be 0 or more (or \"task\")")
        return value

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
        shots = f":{self.num_fewshot}-shot" if self.num_fewshot else ""  # zero-shot rows keep their version
        return f"lm-eval-{lm_eval.__version__}:{self.options.task}@{version}{shots}"

    @property
    def num_fewshot(self) -> int:
        """Examples per context: the option, or with "task" the task YAML's own (lm-eval's rules)."""
        return resolve_fewshot(self.options.num_fewshot, self.options.task, self.config)

    @property
    def fewshot_split(self) -> tuple[str, str | None]:
        return fewshot_source(self.config, self.split)

    @property
    def dataset_revision(self) -> str | None:
        return self._revision

    # -- data ------------------------------------------------------------------------------

    def hub_split(self, split: str | None = None) -> sources.HubSplit | None:
        if sources.is_local_source(self.spec.source) or self.config.get("dataset_path") in LOCAL_BUILDERS:
            return None
        path = self.spec.source or self.config.get("dataset_path")
        if not path:
            raise ValueError(f"bench {self.spec.name!r}: task {self.options.task} has no dataset_path")
        return sources.HubSplit(path, self.config.get("dataset_name"), split or self.split, self.spec.revision)

    def records(self) -> sources.Records:
        return self.split_records(self.split)

    def split_records(self, split: str) -> sources.Records:
        if sources.is_local_source(self.spec.source):
            if split != self.split:
                raise ValueError(
                    f"bench {self.spec.name!r}: task {self.options.task} takes its few-shot examples from its "
                    f"{split!r} split, which `source: {self.spec.source}` does not hold; ask it zero-shot "
                    f"(num_fewshot: 0) or read the task's own data (no `source:`)")
            return sources.read_local(self.spec.source)
        cfg = self.config
        if cfg.get("dataset_path") in LOCAL_BUILDERS:
            splits, data_files = self._local_splits
            if split not in splits:
                raise ValueError(f"bench {self.spec.name!r}: the task's local data has splits {list(splits)}, "
                                 f"not {split!r}")
            return sources.Records(splits[split].to_list(), f"local:{data_files}")
        return sources.read_cached(self.hub_split(split), self.cache)

    @functools.cached_property
    def _local_splits(self):
        import datasets

        cfg = self.config
        kwargs = dict(cfg.get("dataset_kwargs") or {})
        if "data_files" in kwargs:  # relative to the task's YAML (omk-ray's own tasks ship their data)
            kwargs["data_files"] = beside(self.yaml_path.parent, kwargs["data_files"])
        with _quiet():
            return datasets.load_dataset(cfg["dataset_path"], cfg.get("dataset_name"), **kwargs), kwargs.get("data_files")

    def _fewshot_rows(self, rows: list[dict]) -> list[dict] | None:
        """The rows of the split the task draws its examples from (None: its fewshot_config's samples)."""
        kind, split = self.fewshot_split
        if kind in ("samples", "test"):
            return None
        return rows if split == self.split else self.split_records(split).rows

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
            kind, split = self.fewshot_split
            if self.num_fewshot and kind not in ("samples", "test") and split != self.split:
                ref = self.hub_split(split)  # the few-shot examples' split
                try:
                    meta = sources.fetch_split(ref, cache, token=os.environ.get("HF_TOKEN"))
                except sources.DataError as err:
                    raise sources.DataError("; ".join([*done, f"few-shot split: {err}"])) from None
                state = "cached" if meta.get("cached") else "fetched"
                done.append(f"{ref.label}@{meta['revision']}: {meta['rows']} rows, few-shot examples ({state})")
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
        contexts = self.fewshot_contexts(records.rows, docs) if self.num_fewshot else [None] * len(docs)
        return [self._doc(task, i, doc, raw[i] if i < len(raw) else {}, ctx)
                for i, (doc, ctx) in enumerate(zip(docs, contexts))]

    def fewshot_contexts(self, rows: list[dict], docs: list[dict]) -> list:
        """Every document's few-shot context (plain text, or chat messages for generate_until), built as
        lm-eval's evaluator builds them: in the split's order, from one sampler seeded once."""
        fewshot_rows = self._fewshot_rows(rows)
        by = (self.config.get("metadata") or {}).get(FEWSHOT_BY)
        if not by:
            return self._contexts(rows, docs, fewshot_rows)
        if len(rows) != len(docs):
            raise ValueError(f"bench {self.spec.name!r}: {FEWSHOT_BY} needs the task's process_docs to keep its rows")
        out: list = [None] * len(docs)
        for value in dict.fromkeys(str(r.get(by)) for r in rows):  # each group as lm-eval's task of its own
            mine = [i for i, r in enumerate(rows) if str(r.get(by)) == value]
            examples = None if fewshot_rows is None else [r for r in fewshot_rows if str(r.get(by)) == value]
            for i, ctx in zip(mine, self._contexts([rows[i] for i in mine], [docs[i] for i in mine], examples)):
                out[i] = ctx
        return out

    def _contexts(self, rows: list[dict], docs: list[dict], fewshot_rows: list[dict] | None) -> list:
        fewshot = fewshot_setup(self.config, self.split, fewshot_rows)
        with seeded_random(self.options.seed):  # process_docs may shuffle, as for the docs themselves
            task = make_task(self.config, rows, processed=False, fewshot=fewshot)
        return contexts_of(task, docs, self.num_fewshot, self.options.fewshot_seed, chat=not self.scores_text)

    @property
    def domain_fields(self) -> tuple[str | None, str | None]:
        return resolve_domain_fields(self.options.task, self.options.domain_field, self.options.subdomain_field)

    def _doc(self, task, index: int, doc: dict, raw: dict, context: Any = None) -> Doc:
        opts = self.options
        domain_field, subdomain_field = self.domain_fields

        def field(name: str | None) -> str | None:
            if not name:
                return None
            value = doc.get(name, raw.get(name))
            return None if value is None else str(value)

        if self.scores_text:
            scoring = Scoring(**scoring_request(task, doc, index, context))
            shown = scoring.rolling if scoring.rolling is not None else scoring.pairs[0][0]
            messages = [{"role": "user", "content": shown}]  # shown only: the engine scores `scoring`
            target = None if scoring.rolling is not None else doc_target(task, doc)
        else:
            messages = context if context is not None else prompt_messages(task, doc)
            scoring, target = None, doc_target(task, doc)
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
    if entry is not None and entry.kind.name in ("GROUP", "TAG"):
        own = f"{task}_all"
        hint = (f"use `task: {own}` (omk-ray's {task} as one task, each document's subject its domain)"
                if (OWN_TASKS / f"{own}.yaml").exists() else "give each of its tasks a bench of its own")
        raise ValueError(f"lm-eval's {task!r} is a {entry.kind.name.lower()} of tasks, not one task, and a bench "
                         f"runs one task: {hint}")
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


def make_task(cfg: dict[str, Any], rows: list[dict], processed: bool, fewshot: dict[str, Any] | None = None):
    """An lm-eval ConfigurableTask over in-memory rows (no hub access), zero-shot unless `fewshot`
    (`fewshot_setup`) says where its few-shot docs are.

    `processed=True`: the rows already went through the task's process_docs (scoring).
    """
    from datasets import Dataset, DatasetDict
    from lm_eval.api.task import ConfigurableTask

    splits = {SPLIT: list(rows), **((fewshot or {}).get("splits") or {})}
    cfg = dict(cfg)
    cfg.update(
        dataset_path=None,
        dataset_name=None,
        dataset_kwargs=None,
        custom_dataset=lambda **_: DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}),
        training_split=None,
        validation_split=None,
        test_split=SPLIT,
        fewshot_split=None,
        fewshot_config=None,
        num_fewshot=0,
    )
    if fewshot:
        cfg.update(fewshot["config"])
    if processed:
        cfg["process_docs"] = None
    _reuse_compiled_templates()
    with _quiet():
        return ConfigurableTask(config=cfg)


def resolve_fewshot(asked: int | str, task: str, cfg: dict[str, Any]) -> int:
    """The examples per context: `asked`, or ("task") the YAML's num_fewshot as lm-eval's evaluator takes it
    when --num_fewshot is not given. lm-eval ignores --num_fewshot for a task whose YAML fixes it at 0:
    omk-ray refuses to."""
    own = cfg.get("num_fewshot")
    if asked == "task":
        return int(own or 0)
    if asked and own == 0:
        raise ValueError(f"lm-eval task {task} fixes num_fewshot: 0 in its YAML (lm-eval ignores --num_fewshot "
                         f"{asked} for it); ask it zero-shot or define a task of your own with a few-shot split")
    return int(asked)


def fewshot_source(cfg: dict[str, Any], eval_split: str) -> tuple[str, str | None]:
    """Where lm-eval takes a task's few-shot docs from (`ConfigurableTask.fewshot_docs`): ("split", name) its
    fewshot split, ("samples", None) its fewshot_config's own samples, else its first split of training,
    validation ("training"/"validation", name), or ("test", eval split) the evaluated docs themselves."""
    own = cfg.get("fewshot_config") or {}
    split = own.get("split", cfg.get("fewshot_split"))
    if split is not None:
        return "split", split
    if own.get("samples") is not None:
        return "samples", None
    for kind in ("training", "validation"):
        if cfg.get(f"{kind}_split"):
            return kind, cfg[f"{kind}_split"]
    return "test", eval_split


def fewshot_setup(cfg: dict[str, Any], eval_split: str, fewshot_rows: list[dict] | None) -> dict[str, Any]:
    """`make_task`'s `fewshot`: the split holding the few-shot docs and the config naming it as the task's
    own YAML does (so that lm-eval's rules apply: only a fewshot split that is the evaluated split leaves
    the document out of its own examples)."""
    kind, split = fewshot_source(cfg, eval_split)
    own = dict(cfg.get("fewshot_config") or {}) or None
    if kind == "split":
        key = SPLIT if split == eval_split else FEWSHOT
        if own and "split" in own:
            own["split"] = key
        return {"splits": {} if key == SPLIT else {FEWSHOT: fewshot_rows},
                "config": {"fewshot_split": key, "fewshot_config": own}}
    if kind in ("training", "validation"):
        return {"splits": {FEWSHOT: fewshot_rows}, "config": {f"{kind}_split": FEWSHOT, "fewshot_config": own}}
    return {"splits": {}, "config": {"fewshot_config": own}}


def contexts_of(task, docs: list[dict], num_fewshot: int, seed: int, chat: bool) -> list:
    """Each document's context as `build_all_requests` builds it after `set_fewshot_seed(seed)`: the
    sampler's draws follow one another from document to document in this order."""
    task.set_fewshot_seed(seed=seed)
    if chat:
        return [prompt_messages(task, doc, num_fewshot) for doc in docs]
    return [task.fewshot_context(doc, num_fewshot=num_fewshot, gen_prefix=task.doc_to_prefix(doc)) for doc in docs]


def _reuse_compiled_templates() -> None:
    """lm-eval compiles a task's Jinja templates again for every doc (~7 ms each, 25 s for
    ARC's 1172 prompts here); compiled templates are immutable, so compile each once."""
    import lm_eval.utils

    env = lm_eval.utils.env
    if not hasattr(env.from_string, "cache_info"):
        env.from_string = functools.lru_cache(maxsize=1024)(env.from_string)


def _messages_only(messages: list[dict], add_generation_prompt: bool = True) -> list[dict]:
    return messages


def prompt_messages(task, doc: dict, num_fewshot: int = 0) -> list[dict[str, str]]:
    """The chat messages lm-eval would send for `doc` (system description, few-shot turns, user turn, gen
    prefix): `--apply_chat_template` with `--fewshot_as_multiturn` (its default then)."""
    messages = task.fewshot_context(
        doc=doc,
        num_fewshot=num_fewshot,
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


def task_requests(task, doc: dict, index: int = 0, ctx: Any = None) -> list:
    """lm-eval's request instances of one document on its plain-text context (`ctx`, default zero-shot),
    as its evaluator builds them."""
    if ctx is None:
        ctx = task.fewshot_context(doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
    instances = task.construct_requests(doc=doc, ctx=ctx, metadata=(task.config.task, index, 1))
    return instances if isinstance(instances, list) else [instances]


def scoring_request(task, doc: dict, index: int = 0, ctx: Any = None) -> dict[str, Any]:
    """A document's scoring request (`Scoring` fields): its (context, continuation) pairs, or its rolling text."""
    instances = task_requests(task, doc, index, ctx)
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

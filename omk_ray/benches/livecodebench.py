"""LiveCodeBench code generation, read straight from `code_generation_lite`'s JSONL release files.

    - name: lcb_medium_55
      kind: livecodebench
      # source: a folder holding test.jsonl, test2.jsonl, ... (or one such file); omitted: the
      #   data cache filled by `omk-ray fetch-data` (livecodebench/code_generation_lite)
      options:
        problems: medium_55   # the frozen 55 (default); or "all", narrowed by difficulty/dates/platform
        tests: all            # public + private tests (LiveCodeBench); "public": the upstream runner
        test_timeout_s: 6     # per test, as LiveCodeBench

(Its loading script fails with datasets >= 4, hence the files.) The answer's code is the last
fenced block; functional (LeetCode `Solution` class) problems call the method per test,
stdin/stdout problems run the program per test and compare its output line by line. Private
tests ship as base64(zlib(pickle(json))): unpickling can run code, so they are decoded by
an unpickler that refuses every global, i.e. that can only build plain data.

`medium_55` is the users' `lcb_medium_55` baseline: the 55 medium functional (LeetCode)
problems dated 2024-10-01 or later in release_v6, in file order (ids from its results).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import pickle
import re
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import Field

from omk_ray.benches import sources
from omk_ray.benches.base import Doc
from omk_ray.benches.code_extract import last_fenced_block
from omk_ray.benches.code_bench import CodeBench, CodeOptions
from omk_ray.benches.sandbox import Program

HUB_REPO = "livecodebench/code_generation_lite"
RELEASE_FILES = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")
MEDIUM_55 = tuple(
    f"lcb/leetcode/{qid}"
    for qid in (
        "3579", "3566", "3502", "3607", "3593", "3629", "3627", "3639",
        "3654", "3487", "3587", "3622", "3591", "3647", "3594", "3681",
        "3653", "3649", "3655", "3613", "3686", "3620", "3683", "3699",
        "3659", "3657", "3634", "3715", "3716", "3677", "3720", "3714",
        "3737", "3721", "3751", "3754", "3748", "3760", "3779", "3771",
        "3764", "3786", "3722", "3759", "3791", "3750", "3795", "3809",
        "3794", "3793", "3743", "3763", "3785", "3776", "3805",
    )
)  # fmt: skip
PROBLEM_LISTS = {"medium_55": MEDIUM_55}

FUNCTIONAL_PROMPT = (
    "Solve the following Python coding problem. Respond with ONLY the completed Solution class in a "
    "Python markdown block, no explanations.\n\n{question}\n\n```python\n{starter}\n```"
)
STDIN_PROMPT = (
    "Solve the following Python coding problem. The program must read its input from standard input "
    "and write the answer to standard output. Respond with ONLY the complete program in a Python "
    "markdown block, no explanations.\n\n{question}\n\n```python\n# YOUR CODE HERE\n```"
)
QUESTION_ID = re.compile(r'"question_id":\s*"([^"]*)"')
PLATFORM = re.compile(r'"platform":\s*"([^"]*)"')
MAX_DECODED_TESTS = 1 << 30  # bytes a private-test blob may inflate to


class LcbOptions(CodeOptions):
    problems: str = Field("medium_55", description="a frozen list name, or 'all'")
    difficulty: Literal["easy", "medium", "hard"] | None = None
    min_date: str | None = Field(None, description="contest_date >= this (YYYY-MM-DD), with problems: all")
    max_date: str | None = Field(None, description="contest_date < this, with problems: all")
    platform: str | None = None
    release: str = Field("release_v6", pattern=r"^release_v[1-6]$", description="how many release files")
    tests: Literal["all", "public"] = "all"
    test_timeout_s: float = Field(6.0, gt=0)
    timeout_s: float = Field(120.0, gt=0, description="cap on the wall and CPU time of one program, all tests")
    prompt_functional: str = FUNCTIONAL_PROMPT
    prompt_stdin: str = STDIN_PROMPT


class LiveCodeBench(CodeBench):
    Options = LcbOptions

    @property
    def scorer_version(self) -> str:  # type: ignore[override]
        return f"livecodebench-1:{self.options.tests}-tests"

    # -- data ------------------------------------------------------------------------------

    @property
    def release_files(self) -> tuple[str, ...]:
        return RELEASE_FILES[: int(self.options.release[-1])]

    def files(self, cache: Path | None = None) -> list[Path]:
        source = self.spec.source
        if source:
            path = Path(source)
            if path.is_file():
                return [path]
            if not path.is_dir():
                raise sources.DataError(f"bench {self.spec.name!r}: LiveCodeBench source {source} not found")
            folder = path
        else:
            folder = cache_folder(cache)
        missing = [name for name in self.release_files if not (folder / name).is_file()]
        if missing:
            raise sources.DataError(
                f"bench {self.spec.name!r}: {folder} lacks {missing} of {self.options.release}. Run "
                f"`omk-ray fetch-data CONFIG --cache DIR` where the hub is reachable (and set {sources.CACHE_ENV}=DIR), "
                f"or give the bench `source:` a folder holding code_generation_lite's test*.jsonl"
            )
        return [folder / name for name in self.release_files]

    def fetch_data(self, cache: Path) -> list[str]:
        """Download the release files (not the loading script, which datasets >= 4 cannot run)."""
        if self.spec.source:
            return [f"local data: {len(self.files())} file(s)"]
        from huggingface_hub import HfApi, hf_hub_download

        folder = cache_folder(cache)
        revision = self.spec.revision or HfApi().dataset_info(HUB_REPO).sha
        for name in self.release_files:
            hf_hub_download(HUB_REPO, name, repo_type="dataset", revision=revision, local_dir=folder)
        meta = {"dataset": HUB_REPO, "revision": revision, "files": list(self.release_files),
                "fetched_at": datetime.now(timezone.utc).isoformat()}  # fmt: skip
        (folder / "revision.json").write_text(json.dumps(meta, indent=2))
        return [f"{HUB_REPO}@{revision}: {', '.join(self.release_files)}"]

    def load_docs(self) -> list[Doc]:
        files = self.files()
        wanted = PROBLEM_LISTS.get(self.options.problems)
        if wanted is None and self.options.problems != "all":
            raise ValueError(
                f"bench {self.spec.name!r}: options.problems must be 'all' or one of {sorted(PROBLEM_LISTS)}"
            )
        rows = {}
        for row in read_rows(files, set(wanted) if wanted else None):
            rows[task_id(row)] = row
        if wanted:
            missing = [i for i in wanted if i not in rows]
            if missing:
                raise ValueError(f"bench {self.spec.name!r}: problems missing from {files[0].parent}: {missing[:5]}")
            chosen = [rows[i] for i in wanted]
        else:
            chosen = [row for row in rows.values() if self._selected(row)]
        self._revision = self.spec.revision or revision_of(files)
        return [self._doc(row) for row in chosen]

    def _selected(self, row: dict) -> bool:
        o, date = self.options, (row.get("contest_date") or "")[:10]
        return (
            (o.difficulty is None or row.get("difficulty") == o.difficulty)
            and (o.platform is None or row.get("platform") == o.platform)
            and (o.min_date is None or date >= o.min_date)
            and (o.max_date is None or date < o.max_date)
        )

    def _doc(self, row: dict) -> Doc:
        try:
            public = json.loads(row.get("public_test_cases") or "[]")
            metadata = json.loads(row.get("metadata") or "{}")
        except ValueError as err:
            raise sources.DataError(f"{task_id(row)}: malformed public_test_cases or metadata ({err})") from None
        testtype = public[0].get("testtype") if public else "stdin"
        starter = row.get("starter_code") or ""
        fn_name = metadata.get("func_name") or _method_name(starter)
        if testtype == "functional":
            prompt = self.options.prompt_functional.format(question=row["question_content"], starter=starter)
        else:
            prompt = self.options.prompt_stdin.format(question=row["question_content"], starter=starter)
        return Doc(
            id=task_id(row),
            messages=[{"role": "user", "content": prompt}],
            domain=row.get("difficulty"),
            subdomain=row.get("platform"),
            meta={
                "testtype": testtype,
                "fn_name": fn_name,
                "public_tests": [{"input": t["input"], "output": t["output"]} for t in public],
                "private_tests": row.get("private_test_cases") or "",
                "contest_date": row.get("contest_date"),
            },
        )

    # -- scoring ---------------------------------------------------------------------------

    def program(self, doc: Doc, response: str) -> tuple[Program, str]:
        code = last_fenced_block(response)
        tests = list(doc.meta["public_tests"])
        if self.options.tests == "all":
            tests += [{"input": t["input"], "output": t["output"]} for t in self._private_tests(doc)]
        o = self.options
        wall = min(o.timeout_s, o.test_timeout_s * (len(tests) + 1) + 5)
        biggest = max((len(t["input"]) + len(t["output"]) for t in tests), default=0)
        disk_mb = max(self.sandbox.limits.disk_mb, 4 * biggest // 2**20 + 16)  # one test's files at a time
        return (
            Program(
                program=code,
                check="call" if doc.meta["testtype"] == "functional" else "stdio",
                tests=tuple(tests),
                fn_name=doc.meta["fn_name"],
                test_timeout_s=o.test_timeout_s,
                limits=self.sandbox.limits.but(wall_s=wall, cpu_s=wall, disk_mb=disk_mb),
            ),
            code,
        )

    def _private_tests(self, doc: Doc) -> list[dict]:
        return _decoded(doc.id, doc.meta["private_tests"])


@functools.lru_cache(maxsize=8)
def _decoded(doc_id: str, raw: str) -> list[dict]:
    try:
        return decode_private_tests(raw)
    except (ValueError, pickle.UnpicklingError, zlib.error) as err:
        raise ValueError(f"{doc_id}: private tests cannot be decoded: {err}") from None


def decode_private_tests(raw: str) -> list[dict]:
    """Plain JSON, or base64(zlib(pickle(json string))), without letting the pickle run anything."""
    if not raw:
        return []
    try:
        return json.loads(raw)
    except ValueError:
        pass
    inflater = zlib.decompressobj()
    blob = inflater.decompress(base64.b64decode(raw.encode(), validate=True), MAX_DECODED_TESTS)
    if inflater.unconsumed_tail:
        raise ValueError(f"private tests inflate past {MAX_DECODED_TESTS} bytes")
    value = DataOnlyUnpickler(io.BytesIO(blob)).load()
    tests = json.loads(value) if isinstance(value, (str, bytes)) else value
    if not isinstance(tests, list) or not all(isinstance(t, dict) and {"input", "output"} <= t.keys() for t in tests):
        raise ValueError("private tests are not a list of {input, output}")
    return tests


class DataOnlyUnpickler(pickle.Unpickler):
    """Builds strings, numbers, lists, dicts...; any global (the way a pickle runs code) is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: test data must be plain data")


def read_rows(files: list[Path], wanted: set[str] | None):
    """Rows of the release files; with `wanted` task ids, only those lines are parsed."""
    for path in files:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if wanted is not None:
                    qid, platform = QUESTION_ID.search(line), PLATFORM.search(line)
                    if qid and platform and f"lcb/{platform.group(1)}/{qid.group(1)}" not in wanted:
                        continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise sources.DataError(f"{path}:{n}: not JSON ({err})") from None
                if not isinstance(row, dict) or "question_id" not in row or "question_content" not in row:
                    raise sources.DataError(f"{path}:{n}: not a code_generation_lite problem")
                yield row


def task_id(row: dict) -> str:
    return f"lcb/{row.get('platform', '?')}/{row['question_id']}"


def cache_folder(cache: Path | None = None) -> Path:
    return Path(cache or sources.default_cache()) / HUB_REPO.replace("/", "__")


def revision_of(files: list[Path]) -> str:
    meta = files[0].parent / "revision.json"
    if meta.is_file():
        return f"{HUB_REPO}@{json.loads(meta.read_text()).get('revision')}"
    stats = ",".join(f"{p.name}:{p.stat().st_size}" for p in files)
    return f"file:{stats}"


def _method_name(starter: str) -> str | None:
    match = re.search(r"def\s+(\w+)\s*\(\s*self", starter) or re.search(r"def\s+(\w+)\s*\(", starter)
    return match.group(1) if match else None


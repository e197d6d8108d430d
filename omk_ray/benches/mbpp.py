"""MBPP: a Python function from a one-line description and its example asserts; pass@1 in the sandbox.

    - name: mbpp
      kind: mbpp
      source: mbpp_test.jsonl      # local JSONL/Parquet rows: task_id, text, code, test_list,
                                   #   test_setup_code; omitted: google-research-datasets/mbpp
                                   #   (config full, split test: 500 problems) from the data cache
      options: {challenge_tests: false}

The prompt is lm-eval's `mbpp_instruct` text, zero-shot, asking for one fenced block. The
answer's last complete function (`code_extract.function_code`) runs followed by the
problem's asserts. EvalPlus's MBPP+ rows (`prompt`, `test`, `test_imports`) work too.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from omk_ray.benches import sources
from omk_ray.benches.base import Doc
from omk_ray.benches.code_extract import function_code
from omk_ray.benches.code_bench import CodeBench, CodeOptions
from omk_ray.benches.sandbox import Program

PROMPT = (
    "You are an expert Python programmer, and here is your task:\n{text}\n"
    "Your code should pass these tests:\n{tests}\n\n"
    "Respond with only the code in a single ```python ... ``` markdown block."
)


class MbppOptions(CodeOptions):
    prompt_template: str = Field(PROMPT, description="the user message; {text} and {tests} are filled in")
    challenge_tests: bool = Field(False, description="also run challenge_test_list")


class MbppBench(CodeBench):
    Options = MbppOptions
    scorer_version = "mbpp-1"

    def hub_split(self) -> sources.HubSplit | None:
        if sources.is_local_source(self.spec.source):
            return None
        return sources.HubSplit(self.spec.source or "google-research-datasets/mbpp", "full", "test", self.spec.revision)

    def records(self, cache: Path | None = None) -> sources.Records:
        if sources.is_local_source(self.spec.source):
            return sources.read_local(self.spec.source)
        return sources.read_cached(self.hub_split(), cache)

    def load_docs(self) -> list[Doc]:
        records = self.records()
        self._revision = self.spec.revision or records.revision
        return [self._doc(n, row, records.revision) for n, row in enumerate(records.rows)]

    def _doc(self, n: int, row: dict, where: str) -> Doc:
        text = row.get("prompt") or row.get("text")
        asserts = list(row.get("test_list") or [])
        if not isinstance(text, str) or "task_id" not in row or not (asserts or row.get("test")):
            raise ValueError(
                f"bench {self.spec.name!r}: row {n} of {where} is not an MBPP problem (task_id, text, test_list)"
            )
        if isinstance(row.get("test"), str) and row["test"].strip():  # MBPP+: one test block with its imports
            tests = "\n".join([*(row.get("test_imports") or []), row["test"]])
        else:
            extra = list(row.get("challenge_test_list") or []) if self.options.challenge_tests else []
            tests = "\n".join([row.get("test_setup_code") or "", *asserts, *extra]).strip("\n")
        shown = "\n".join(asserts[:3]) if asserts else row["test"]
        return Doc(
            id=str(row["task_id"]),
            messages=[{"role": "user", "content": self.options.prompt_template.format(text=text, tests=shown)}],
            target=tests,
        )

    def program(self, doc: Doc, response: str) -> tuple[Program, str]:
        code = function_code(response)
        return Program(program=code, test_code=doc.target or ""), code

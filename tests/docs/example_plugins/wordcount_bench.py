"""An example bench plug-in (docs/adding-a-bench.md): "how many words" questions, made in code.

Options: `docs` (how many questions), `seed`, and those of every bench. Each question's domain is
`short` (under 6 words) or `long`, so the comparison's domain table has two rows.
"""

from __future__ import annotations

import random

from pydantic import Field

from omk_ray.benches import Bench, BenchOptions, Doc, Score
from omk_ray.engines import Completion

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


class WordCountBenchOptions(BenchOptions):
    docs: int = Field(20, ge=1, le=1000, description="how many questions")
    seed: int = 0


class WordCountBench(Bench):
    Options = WordCountBenchOptions
    scorer_version = "1"  # bump it when the scorer changes: `omk-ray rescore` records the old score

    def load_docs(self) -> list[Doc]:
        rng = random.Random(self.options.seed)
        docs = []
        for i in range(self.options.docs):
            words = rng.choices(WORDS, k=rng.randint(1, 10))
            docs.append(Doc(id=f"wc-{i:03d}", messages=[{"role": "user", "content": "count the words: " + " ".join(words)}],
                            target=str(len(words)), domain="short" if len(words) < 6 else "long"))
        return docs

    def score(self, doc: Doc, completion: Completion) -> Score:
        answer = completion.text.strip()
        correct = answer == doc.target
        return Score(score=float(correct), correct=correct, extracted=answer, metrics={"exact_match": float(correct)})

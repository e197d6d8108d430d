"""Synthetic task classes with exact answers, for the toy MoE.

Each problem is `{"class", "subclass", "prompt", "target"}`. A prompt starts with a keyword
whose first letter names its task (`add 76 6`, `rev fdi`, ...), so from the first prompt
token on, the model can tell which task it is solving. The tasks are sized to be learned by a
tiny model in a few CPU minutes (two-digit numbers, a ten-letter alphabet, short strings). `arith` is split into subclasses
(`add`, `sub`, `mul`), like GPQA's science into chemistry, physics and biology; the other
classes have no subclass (`None`).

Held-out problems: `heldout_problems(kind)` draws fixed bench ("test") and profiling
("profile") sets from seeds that do not depend on the training seed; `TrainingStream`
draws training problems from the training seed and never yields a prompt of a held-out set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

LETTERS = "abcdefghij"  # a small alphabet: the tasks are learned in fewer steps
BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}


@dataclass(frozen=True)
class Task:
    cls: str
    subclass: str | None
    make: Callable[[random.Random], tuple[str, str]]  # rng -> (prompt, target)
    weight: float = 1.0  # share of the training stream (slow learners get more)

    @property
    def label(self) -> str:
        """`class` or `class/subclass`: the unit the router specializes on."""
        return f"{self.cls}/{self.subclass}" if self.subclass else self.cls


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(1, 9)
    return f"add {a} {b}", str(a + b)


def _sub(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(1, 9)
    return f"sub {a} {b}", str(a - b)


def _mul(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(2, 5)
    return f"mul {a} {b}", str(a * b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choices(LETTERS, k=rng.randint(3, 5)))
    return f"rev {word}", word[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choices(LETTERS, k=rng.randint(3, 5)))
    return f"order {word}", "".join(sorted(word))


def _logic(rng: random.Random) -> tuple[str, str]:
    """Majority of 3, 5, 7 or 9 votes (`TFTTF` -> `T`): a threshold gate."""
    votes = "".join(rng.choices("TF", k=rng.choice((3, 5, 7, 9))))
    return f"vote {votes}", "T" if votes.count("T") > len(votes) // 2 else "F"


def _brackets(rng: random.Random) -> tuple[str, str]:
    opened = "".join(rng.choices(list(BRACKETS), k=rng.randint(2, 6)))
    return f"close {opened}", "".join(BRACKETS[c] for c in reversed(opened))


def _upper(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choices(LETTERS, k=rng.randint(3, 6)))
    return f"up {word}", word.upper()


TASKS: tuple[Task, ...] = (
    Task("arith", "add", _add, weight=1.5),
    Task("arith", "sub", _sub, weight=1.5),
    Task("arith", "mul", _mul, weight=1.5),
    Task("reverse", None, _reverse),
    Task("sort", None, _sort),
    Task("logic", None, _logic, weight=2.0),
    Task("brackets", None, _brackets, weight=0.5),
    Task("upper", None, _upper, weight=0.5),
)
CLASSES = tuple(dict.fromkeys(t.cls for t in TASKS))
HELDOUT_SEEDS = {"test": 1_000_003, "profile": 2_000_003}
HELDOUT_SIZES = {"test": 50, "profile": 24}  # problems per task (class or subclass)
MAX_ANSWER_CHARS = 6


def problem(task: Task, rng: random.Random) -> dict:
    prompt, target = task.make(rng)
    return {"class": task.cls, "subclass": task.subclass, "prompt": prompt, "target": target}


def heldout_problems(kind: str) -> list[dict]:
    """The fixed `test` (bench) or `profile` set: distinct prompts, the same on every machine."""
    if kind not in HELDOUT_SEEDS:
        raise ValueError(f"unknown held-out set {kind!r}; choose one of {sorted(HELDOUT_SEEDS)}")
    rng = random.Random(HELDOUT_SEEDS[kind])
    taken = set() if kind == "test" else {p["prompt"] for p in heldout_problems("test")}
    problems = []
    for task in TASKS:
        count = 0
        while count < HELDOUT_SIZES[kind]:
            p = problem(task, rng)
            if p["prompt"] not in taken:
                taken.add(p["prompt"])
                problems.append({"id": f"{task.label.replace('/', '-')}-{count:03d}", **p})
                count += 1
    return problems


class TrainingStream:
    """An endless, seeded stream of training problems (tasks drawn by weight), none from a held-out set."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.excluded = {p["prompt"] for kind in HELDOUT_SEEDS for p in heldout_problems(kind)}

    def __iter__(self) -> Iterator[dict]:
        weights = [t.weight for t in TASKS]
        while True:
            task = self.rng.choices(TASKS, weights)[0]
            p = problem(task, self.rng)
            while p["prompt"] in self.excluded:
                p = problem(task, self.rng)
            yield p

    def batch(self, size: int) -> list[dict]:
        it = iter(self)
        return [next(it) for _ in range(size)]

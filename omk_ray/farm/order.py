"""The representative order of a bench: one seeded permutation, stratified by domain and subdomain,
in which every variant reads the bench.

Every prefix of it is a sample of the whole bench: the canary, `--limit N` and every stage of
`farm.stages` are prefixes, and each holds every domain (and, within it, every subdomain) in close
to the bench's proportions. Strata are interleaved systematically: the j-th of the n_k documents
of stratum k (shuffled within it) is placed at (j + u_k) / n_k, u_k a seeded offset in [0, 1), and
the documents are read in the order of those places. Any prefix of length m then holds within one
document of m n_k / N of each stratum. Within a domain its subdomains are interleaved the same way.

The order depends on the seed, the bench's name and its documents' ids and domains only, never on
the variant: the first n problems of two variants pair. `OrderRecord` is what a run's manifest
keeps of it (`RunManifest.orders`); `reuse` puts a bench's documents back in a recorded order, so a
resumed run reads the same permutation even where documents were added since.
"""

from __future__ import annotations

import hashlib
import random
from typing import TypeVar

from omk_ray.results.run_records import OrderRecord

METHOD = OrderRecord.model_fields["method"].default  # domain, then subdomain; systematic placement, seeded offsets

D = TypeVar("D")  # a document: has .id, .domain, .subdomain


def representative_order(docs: list[D], seed: int, bench: str) -> list[D]:
    """The documents of `bench` in its representative order (see the module)."""
    rng = random.Random(f"{seed}:{bench}:order")
    return _interleave(docs, rng, [lambda d: d.domain or "", lambda d: d.subdomain or ""])


def _interleave(docs: list[D], rng: random.Random, keys: list) -> list[D]:
    if not keys:
        docs = sorted(docs, key=lambda d: d.id)  # the file's order does not matter: the ids and the seed do
        rng.shuffle(docs)
        return docs
    strata: dict[str, list[D]] = {}
    for d in docs:
        strata.setdefault(keys[0](d), []).append(d)
    placed = []
    for name in sorted(strata):
        members = _interleave(strata[name], rng, keys[1:])
        offset, tie = rng.random(), rng.random()
        placed += [((j + offset) / len(members), tie, j, d) for j, d in enumerate(members)]
    placed.sort(key=lambda p: p[:3])
    return [p[3] for p in placed]


def order_record(ordered: list[D], seed: int) -> OrderRecord:
    ids = [d.id for d in ordered]
    return OrderRecord(seed=seed, ids=ids, sha256=hashlib.sha256("\n".join(ids).encode()).hexdigest())


def reuse(docs: list[D], record: OrderRecord | dict, seed: int, bench: str) -> list[D]:
    """`docs` in the recorded order; documents the record lacks (added since) follow in their own
    representative order, and recorded ids no longer in the bench are left out."""
    record = OrderRecord.model_validate(record)
    by_id = {d.id: d for d in docs}
    known = [by_id[i] for i in record.ids if i in by_id]
    recorded = set(record.ids)
    return known + representative_order([d for d in docs if d.id not in recorded], seed, bench)

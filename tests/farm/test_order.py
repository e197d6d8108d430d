"""The representative order: every prefix of a bench holds its domains in proportion, the same order for
every variant and every run of the same seed, another order for another seed; `--limit` and the canary are
prefixes of it, and a resumed run reads the recorded order again."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from omk_ray.config import load_grid
from omk_ray.demo import DEMO_CONFIG
from omk_ray.farm.order import order_record, representative_order, reuse
from omk_ray.farm.planner import make_plan, read_benches
from omk_ray.results.run_records import RunManifest


@dataclass(frozen=True)
class D:
    id: str
    domain: str | None = None
    subdomain: str | None = None


def shares(docs) -> dict[str, float]:
    counts = Counter(d.domain for d in docs)
    return {k: v / len(docs) for k, v in counts.items()}


@pytest.fixture(scope="module")
def demo():
    return load_grid(DEMO_CONFIG)


def test_limit_120_of_the_demo_grid_holds_every_domain_in_its_share(demo):
    full = read_benches(demo).docs["toy"]
    limited = make_plan(demo, limit_docs=120, gpu=False)
    works = [w for w in limited.work if w.bench == "toy"]
    prefix = [d for d, _ in works[0].samples]
    assert len(prefix) == 120 and prefix == [d for d, _ in works[-1].samples]  # every variant: the same docs, same order
    assert [d.id for d in prefix] == [d.id for d in full[:120]]  # a prefix of the full order
    whole, part = shares(full), shares(prefix)
    assert set(part) == set(whole) and len(whole) >= 3
    for domain, share in whole.items():
        assert abs(part[domain] - share) <= 1 / 120 + 1e-9, (domain, part[domain], share)  # within one document
    sub_full = Counter((d.domain, d.subdomain) for d in full)
    sub_part = Counter((d.domain, d.subdomain) for d in prefix)
    assert set(sub_part) == set(sub_full)  # every subdomain is in the prefix too
    # the canary is the order's first docs, spread over every domain
    assert works[0].canary_ids == [d.id for d in full[: demo.farm.canary.docs]]
    assert len({d.domain for d in full[: demo.farm.canary.docs]}) == len(whole)
    # the class-sorted file's first 120 are what --limit took before: one domain only
    assert len(shares(make_plan_docs_in_file_order(demo)[:120])) == 1


def make_plan_docs_in_file_order(grid):
    from omk_ray.benches import make_bench

    return make_bench(grid.benches[0]).docs()


def test_every_prefix_is_within_one_document_of_each_domains_share():
    docs = [D(f"a{i}", "a") for i in range(50)] + [D(f"b{i}", "b") for i in range(30)] + [D(f"c{i}", "c") for i in range(7)]
    order = representative_order(docs, 3, "x")
    assert sorted(d.id for d in order) == sorted(d.id for d in docs)
    for m in range(1, len(order) + 1):
        counts = Counter(d.domain for d in order[:m])
        for domain, size in (("a", 50), ("b", 30), ("c", 7)):
            assert abs(counts[domain] - m * size / len(docs)) < 1 + 1e-9 * m, (m, domain)


def test_same_seed_same_order_other_seed_or_bench_another():
    docs = [D(f"q{i}", "even" if i % 2 else "odd", f"s{i % 5}") for i in range(64)]
    first = [d.id for d in representative_order(docs, 0, "b")]
    assert first == [d.id for d in representative_order(list(reversed(docs)), 0, "b")]  # the file's order does not matter
    assert first != [d.id for d in representative_order(docs, 1, "b")]
    assert first != [d.id for d in representative_order(docs, 0, "other")]
    assert first != [d.id for d in docs]


def test_a_resumed_run_reads_the_recorded_order_and_the_manifest_keeps_it():
    docs = [D(f"q{i}", "x" if i < 10 else "y") for i in range(20)]
    record = order_record(representative_order(docs, 0, "b"), 0)
    manifest = RunManifest.model_validate_json(RunManifest(run_id="r", orders={"b": record}).model_dump_json())
    assert manifest.orders["b"].ids == record.ids and len(record.sha256) == 64
    added = docs + [D("new", "x")]
    resumed = reuse(added, manifest.orders["b"], 0, "b")
    assert [d.id for d in resumed] == record.ids + ["new"]  # the recorded permutation first, the new document after
    assert [d.id for d in reuse(docs[1:], record, 0, "b")] == [i for i in record.ids if i != "q0"]


def test_a_plan_records_every_benchs_order_and_reads_a_recorded_one_again(demo):
    plan = make_plan(demo, gpu=False, canary_only=True)
    record = plan.orders["toy"]
    assert len(record.ids) == 400 and record.seed == demo.farm.canary.seed
    turned = record.model_copy(update={"ids": list(reversed(record.ids))})
    again = make_plan(demo, gpu=False, limit_docs=5, orders={"toy": turned})
    assert [d.id for d, _ in again.work[0].samples] == list(reversed(record.ids))[:5]

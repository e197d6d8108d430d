"""Which experts each problem needed: the baseline's routing mass on the experts a variant dropped.

For a variant V with drop map D (layer -> dropped expert ids: from V's checkpoint provenance,
`omk_ray_provenance.json`, or given) and the baseline's routing of its own samples
(`omk-ray route RESULTS --variant BASELINE`, results/routing.py), per problem p:

    share_l,e(p)  = w_l,e(p) / sum_e' w_l,e'(p)                         expert e's part of layer l
    exposure_l(p) = sum_{e in D_l} share_l,e(p)                          per layer
    exposure(p)   = sum_l sum_{e in D_l} w_l,e(p) / sum_l sum_e w_l,e(p) overall

where w_l,e(p) is the summed routing weight of the problem's positions on expert e of layer l
(every segment: prompt, reasoning, answer; repeats pooled). `exposure_tokens` is the same with
routed-token counts instead of weights, `exposure_<segment>` the overall exposure of one segment.

Problems are grouped by the comparison's outcome (agreement.py): lost (only the baseline right),
both correct, gained, both wrong; a problem the variant did not answer is `unpaired`. The pooled
test compares exposures of two groups with the two-sided Mann-Whitney U test (scipy), effect size
the rank-biserial correlation r = 2U / (n_a n_b) - 1 (= Cliff's delta: +1 when every problem
of the first group is more exposed than every problem of the second).

Pooled over domains, that comparison is confounded: when the lost problems come mostly from one
domain and that domain routes more to the dropped experts, lost problems look more exposed even
if, within every domain, lost and kept problems were equally exposed. `exposure_within` therefore
compares lost with both-correct problems within each domain (Mann-Whitney U and r per domain), and
combines the domains in one stratified test: the van Elteren statistic T = sum_d (U_d - n_a,d n_b,d / 2)
/ (n_d + 1), its two-sided p from a permutation test that shuffles the outcomes within each domain
(`STRATIFIED_PERMUTATIONS`, seeded), and the domains' r averaged with the same weights
n_a,d n_b,d / (n_d + 1). Domains without both groups carry no weight. The pooled figure is kept,
to be shown only beside these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.analysis.agreement import OUTCOMES, outcomes
from omk_ray.analysis.samples import AnalysisError, Pair, natural_key
from omk_ray.results.routing import SEGMENTS, RoutingTable
from omk_ray.results.store import ResultsStore

UNPAIRED = "unpaired"
WITHIN = "within domains"  # the stratified row of `exposure_within`
STRATIFIED_PERMUTATIONS = 10_000
TESTS = (("lost", "both_correct"), ("gained", "both_correct"), ("lost", "gained"))
TOP_EXPERTS = 20
NO_DOMAIN = "(none)"

_STR, _F, _I = pa.string(), pa.float64(), pa.int64()
SCHEMAS = {
    "exposure": pa.schema([
        ("bench", _STR), ("variant", _STR), ("doc_id", _STR), ("domain", _STR), ("subdomain", _STR),
        ("outcome", _STR), ("exposure", _F), ("exposure_tokens", _F),
        *[(f"exposure_{s}", _F) for s in SEGMENTS], ("exposure_per_layer", pa.list_(_F)),
    ]),
    "exposure_tests": pa.schema([
        ("bench", _STR), ("variant", _STR), ("group_a", _STR), ("group_b", _STR), ("n_a", _I), ("n_b", _I),
        ("median_a", _F), ("median_b", _F), ("mean_a", _F), ("mean_b", _F), ("u", _F), ("p_value", _F),
        ("rank_biserial", _F),
    ]),
    "exposure_within": pa.schema([
        ("bench", _STR), ("variant", _STR), ("stratum", _STR), ("n_lost", _I), ("n_both_correct", _I),
        ("median_lost", _F), ("median_both_correct", _F), ("mean_lost", _F), ("mean_both_correct", _F),
        ("rank_biserial", _F), ("p_value", _F), ("weight", _F),
    ]),
    "exposure_domains": pa.schema([
        ("bench", _STR), ("variant", _STR), ("level", _STR), ("domain", _STR), ("subdomain", _STR), ("n", _I),
        ("exposure_mean", _F), ("exposure_median", _F), ("paired", _I), ("lost", _I), ("gained", _I),
        ("lost_exposure", _F), ("both_correct_exposure", _F),
    ]),
    "exposure_experts": pa.schema([
        ("bench", _STR), ("variant", _STR), ("layer", _I), ("expert", _I), ("lost_touched", _I), ("lost", _I),
        ("lost_share", _F), ("both_correct_share", _F), ("lift", _F), ("top_domain", _STR),
    ]),
    "expert_usage": pa.schema([
        ("bench", _STR), ("variant", _STR), ("domain", _STR), ("layer", _I), ("expert", _I), ("share", _F),
    ]),
}  # fmt: skip


@dataclass
class Routing:
    """The baseline's routing on one bench: per problem, segment, layer and expert."""

    bench: str
    doc_ids: list[str]
    layers: list[int]
    weight: np.ndarray  # [problems, segments, layers, experts]
    tokens: np.ndarray

    @property
    def num_experts(self) -> int:
        return self.weight.shape[-1]


# -- inputs -------------------------------------------------------------------------------------


def baseline_routing(store: ResultsStore, baseline: str, keys: pa.Table | None = None) -> dict[str, Routing]:
    """bench -> the baseline's routing, pooled over repeats; only samples whose (fingerprint, recipe)
    appear in `keys` (the compared rows: one cohort), when given."""
    table = RoutingTable(store.root).read(baseline)
    if table.num_rows == 0:
        return {}
    if keys is not None:
        wanted = {(f, r) for f, r in zip(keys["variant_fingerprint"].to_pylist(), keys["recipe_hash"].to_pylist())}
        setup = pc.binary_join_element_wise(table["variant_fingerprint"], table["recipe_hash"], "\x00")
        table = table.filter(pc.is_in(setup, pa.array([f"{f}\x00{r}" for f, r in wanted])))
    out = {}
    for bench in sorted(set(table["bench"].to_pylist())):
        part = table.filter(pc.equal(table["bench"], bench))
        widths = set(pc.list_value_length(part["weight"]).to_pylist())
        if len(widths) != 1:
            raise AnalysisError(f"routing of {baseline!r} on {bench!r} mixes expert counts {sorted(widths)}: "
                                "route it again with --force")
        experts = widths.pop()
        docs = sorted(set(part["doc_id"].to_pylist()), key=natural_key)
        layers = sorted(set(part["layer"].to_pylist()))
        doc_at = {d: i for i, d in enumerate(docs)}
        at = (np.array([doc_at[d] for d in part["doc_id"].to_pylist()]),
              np.array([SEGMENTS.index(x) for x in part["segment"].to_pylist()]),
              np.searchsorted(layers, part["layer"].to_numpy()))
        weight = np.zeros((len(docs), len(SEGMENTS), len(layers), experts))
        tokens = np.zeros_like(weight)
        np.add.at(weight, at, pc.list_flatten(part["weight"]).to_numpy().reshape(-1, experts))
        np.add.at(tokens, at, pc.list_flatten(part["tokens"]).to_numpy().reshape(-1, experts))
        out[bench] = Routing(bench, docs, layers, weight, tokens)
    return out


def variant_drop_map(store: ResultsStore, variant: str) -> tuple[dict[str, list[int]] | None, str]:
    """(drop map, where it came from) from the provenance of the checkpoint the variant's runs used."""
    from omk_ray.variants.routing import checkpoint_of
    from omk_ray.variants.surgery import PROVENANCE_NAME

    path = checkpoint_of(store, variant)
    if not path:
        return None, f"no run manifest names the checkpoint of {variant!r}"
    provenance = Path(path) / PROVENANCE_NAME
    # the card names the variant, not this machine's folders
    if not provenance.is_file():
        return None, f"its checkpoint has no {PROVENANCE_NAME}, so no drop map is recorded"
    record = json.loads(provenance.read_text())
    while record is not None and "drop_map" not in record:
        record = record.get("base_provenance")  # a quantized variant: the pruned checkpoint it came from
    if record is None:
        return None, f"its checkpoint's {PROVENANCE_NAME} records no drop map"
    return record["drop_map"], f"{variant}'s {PROVENANCE_NAME}"


# -- the tables ---------------------------------------------------------------------------------


def exposure_tables(
    routing: dict[str, Routing],
    drop_maps: dict[str, dict[str, list[int]]],
    pairs: list[Pair],
    labels: dict[str, dict[str, tuple[str | None, str | None]]],
) -> dict[str, pa.Table]:
    """Every exposure table. `labels`: bench -> doc_id -> (domain, subdomain) of the baseline's problems."""
    from omk_ray.variants.dropmap import DropMapError, validate_drop_map

    by_key = {(p.bench, p.variant): p for p in pairs}
    built: dict[str, list[dict]] = {name: [] for name in SCHEMAS}
    for variant, raw in drop_maps.items():
        for bench, r in routing.items():
            try:
                drop_map = validate_drop_map(raw, num_experts=r.num_experts, layers=r.layers)
            except DropMapError as err:
                raise AnalysisError(f"drop map of {variant!r} does not fit the baseline's routing on {bench!r} "
                                    f"({len(r.layers)} MoE layers x {r.num_experts} experts): {err}") from None
            dropped = np.zeros((len(r.layers), r.num_experts), dtype=bool)
            for li, layer in enumerate(r.layers):
                dropped[li, drop_map[str(layer)]] = True
            per_problem = _problems(r, variant, dropped, by_key.get((bench, variant)), labels.get(bench, {}))
            built["exposure"].extend(per_problem)
            built["exposure_tests"].extend(_tests(per_problem, bench, variant))
            built["exposure_within"].extend(exposure_within(per_problem, bench, variant))
            built["exposure_domains"].extend(_domains(per_problem, bench, variant))
            built["exposure_experts"].extend(_experts(r, per_problem, dropped, bench, variant))
            built["expert_usage"].extend(_usage(r, per_problem, dropped, bench, variant))
    return {name: pa.Table.from_pylist(rows, schema=SCHEMAS[name]) for name, rows in built.items()}


def _share(x: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Dropped part of x [..., layers, experts] over all layers: one number per leading index."""
    total = x.sum(axis=(-1, -2))
    return np.divide((x * dropped).sum(axis=(-1, -2)), total, out=np.full(total.shape, np.nan), where=total > 0)


def _problems(r: Routing, variant: str, dropped: np.ndarray, pair: Pair | None, labels: dict) -> list[dict]:
    weight = r.weight.sum(axis=1)  # [P, L, E]
    overall, by_tokens = _share(weight, dropped), _share(r.tokens.sum(axis=1), dropped)
    per_segment = [_share(r.weight[:, s], dropped) for s in range(len(SEGMENTS))]
    layer_total = weight.sum(axis=-1)
    per_layer = np.divide((weight * dropped).sum(axis=-1), layer_total, out=np.full(layer_total.shape, np.nan),
                          where=layer_total > 0)
    outcome = {}
    if pair is not None:
        outcome = dict(zip(pair.doc_id.to_pylist(), (OUTCOMES[k] for k in outcomes(pair))))
    rows = []
    for i, doc in enumerate(r.doc_ids):
        domain, subdomain = labels.get(doc, (None, None))
        rows.append({
            "bench": r.bench, "variant": variant, "doc_id": doc, "domain": domain, "subdomain": subdomain,
            "outcome": outcome.get(doc, UNPAIRED), "exposure": float(overall[i]), "exposure_tokens": float(by_tokens[i]),
            **{f"exposure_{s}": float(per_segment[k][i]) for k, s in enumerate(SEGMENTS)},
            "exposure_per_layer": per_layer[i].tolist(),
        })
    return rows


def _tests(rows: list[dict], bench: str, variant: str) -> list[dict]:
    from scipy.stats import mannwhitneyu

    out = []
    for a, b in TESTS:
        xa = np.array([r["exposure"] for r in rows if r["outcome"] == a and np.isfinite(r["exposure"])])
        xb = np.array([r["exposure"] for r in rows if r["outcome"] == b and np.isfinite(r["exposure"])])
        u = p = rb = float("nan")
        if len(xa) and len(xb):
            result = mannwhitneyu(xa, xb, alternative="two-sided")
            u, p = float(result.statistic), float(result.pvalue)
            rb = 2 * u / (len(xa) * len(xb)) - 1
        out.append({
            "bench": bench, "variant": variant, "group_a": a, "group_b": b, "n_a": len(xa), "n_b": len(xb),
            "median_a": _stat(np.median, xa), "median_b": _stat(np.median, xb),
            "mean_a": _stat(np.mean, xa), "mean_b": _stat(np.mean, xb), "u": u, "p_value": p, "rank_biserial": rb,
        })
    return out


def exposure_within(rows: list[dict], bench: str, variant: str, a: str = "lost", b: str = "both_correct",
                    permutations: int = STRATIFIED_PERMUTATIONS) -> list[dict]:
    """Lost against both-correct exposure within each domain, then all domains in one stratified test (see the
    module docstring); nothing when the problems carry no domain."""
    from scipy.stats import mannwhitneyu, rankdata

    if not any(r["domain"] for r in rows):
        return []
    kept = [r for r in rows if r["outcome"] in (a, b) and np.isfinite(r["exposure"])]
    strata: dict[str, list[dict]] = {}
    for r in kept:
        strata.setdefault(r["domain"] or NO_DOMAIN, []).append(r)
    out, informative = [], []
    for name in sorted(strata, key=lambda d: (-len(strata[d]), d)):
        x = np.array([r["exposure"] for r in strata[name]])
        is_a = np.array([r["outcome"] == a for r in strata[name]])
        n_a, n_b = int(is_a.sum()), int((~is_a).sum())
        r_d = p_d = float("nan")
        weight = n_a * n_b / (len(x) + 1)
        if n_a and n_b:
            test = mannwhitneyu(x[is_a], x[~is_a], alternative="two-sided")
            r_d, p_d = 2 * float(test.statistic) / (n_a * n_b) - 1, float(test.pvalue)
            informative.append((rankdata(x), is_a, n_a, n_b, weight))
        out.append({"bench": bench, "variant": variant, "stratum": name, "n_lost": n_a, "n_both_correct": n_b,
                    "median_lost": _stat(np.median, x[is_a]), "median_both_correct": _stat(np.median, x[~is_a]),
                    "mean_lost": _stat(np.mean, x[is_a]), "mean_both_correct": _stat(np.mean, x[~is_a]),
                    "rank_biserial": r_d, "p_value": p_d, "weight": weight})
    total_a = sum(r["n_lost"] for r in out)
    total_b = sum(r["n_both_correct"] for r in out)
    r_all = p_all = float("nan")
    if informative:
        weights = np.array([w for *_, w in informative])
        r_all = float(np.dot(weights, [row["rank_biserial"] for row in out if row["weight"] > 0]) / weights.sum())
        p_all = _stratified_p(informative, permutations, seed=f"{variant}/{bench}")
    out.append({"bench": bench, "variant": variant, "stratum": WITHIN, "n_lost": total_a, "n_both_correct": total_b,
                "median_lost": float("nan"), "median_both_correct": float("nan"), "mean_lost": float("nan"),
                "mean_both_correct": float("nan"), "rank_biserial": r_all, "p_value": p_all,
                "weight": float(sum(r["weight"] for r in out))})
    return out


def _stratified_p(strata: list[tuple[np.ndarray, np.ndarray, int, int, float]], permutations: int, seed: str) -> float:
    """Two-sided permutation p of the van Elteren statistic: outcomes shuffled within each stratum."""
    import zlib

    rng = np.random.default_rng(zlib.crc32(seed.encode()))

    def statistic(ranks: np.ndarray, is_a: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
        # U of group a from its rank sum, centred; is_a may be [permutations, n]
        u = (is_a * ranks).sum(axis=-1) - n_a * (n_a + 1) / 2
        return u - n_a * n_b / 2

    observed = sum(statistic(ranks, is_a, n_a, n_b) / (len(ranks) + 1) for ranks, is_a, n_a, n_b, _ in strata)
    shuffled = np.zeros(permutations)
    for ranks, is_a, n_a, n_b, _ in strata:
        labels = np.tile(is_a, (permutations, 1))
        labels = rng.permuted(labels, axis=1)
        shuffled += statistic(ranks, labels, n_a, n_b) / (len(ranks) + 1)
    extreme = np.sum(np.abs(shuffled) >= abs(observed) - 1e-12)
    return float((1 + extreme) / (1 + permutations))


def _stat(fn, x: np.ndarray) -> float:
    return float(fn(x)) if len(x) else float("nan")


def _domains(rows: list[dict], bench: str, variant: str) -> list[dict]:
    if not any(r["domain"] or r["subdomain"] for r in rows):
        return []
    groups: dict[tuple[str, str, str | None], list[dict]] = {}
    for r in rows:
        domain = r["domain"] or NO_DOMAIN
        groups.setdefault(("domain", domain, None), []).append(r)
        if r["subdomain"]:
            groups.setdefault(("subdomain", domain, r["subdomain"]), []).append(r)
    out = []
    for (level, domain, subdomain), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2] or "")):
        x = np.array([m["exposure"] for m in members])

        def of(kind: str) -> np.ndarray:
            return np.array([m["exposure"] for m in members if m["outcome"] == kind])

        out.append({
            "bench": bench, "variant": variant, "level": level, "domain": domain, "subdomain": subdomain,
            "n": len(members), "exposure_mean": _stat(np.nanmean, x), "exposure_median": _stat(np.nanmedian, x),
            "paired": sum(m["outcome"] != UNPAIRED for m in members),
            "lost": len(of("lost")), "gained": len(of("gained")),
            "lost_exposure": _stat(np.mean, of("lost")), "both_correct_exposure": _stat(np.mean, of("both_correct")),
        })
    return out


def _layer_shares(r: Routing) -> np.ndarray:
    """share_l,e(p) [P, L, E]: each expert's part of its layer's routing weight, per problem."""
    weight = r.weight.sum(axis=1)
    total = weight.sum(axis=-1, keepdims=True)
    return np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)


def _experts(r: Routing, rows: list[dict], dropped: np.ndarray, bench: str, variant: str) -> list[dict]:
    """The dropped experts that touch the most lost problems, then by their mean share of the lost
    problems' routing. A problem touches an expert that gets more than an even part (1 / experts)
    of its layer's routing weight in that problem."""
    kinds = np.array([row["outcome"] for row in rows])
    lost, kept = kinds == "lost", kinds == "both_correct"
    if not lost.any():
        return []
    shares = _layer_shares(r)
    touched = (shares[lost] > 1 / r.num_experts).sum(axis=0)  # [L, E]
    lost_share = shares[lost].mean(axis=0)
    kept_share = shares[kept].mean(axis=0) if kept.any() else np.full(lost_share.shape, np.nan)
    lost_weight = r.weight.sum(axis=1)[lost]
    domains = np.array([row["domain"] or NO_DOMAIN for row in rows], dtype=object)[lost]
    candidates = [(li, e) for li, e in zip(*np.nonzero(dropped & (touched > 0)))]
    candidates.sort(key=lambda le: (-touched[le], -lost_share[le], r.layers[le[0]], le[1]))
    out = []
    for li, e in candidates[:TOP_EXPERTS]:
        ks = float(kept_share[li, e])
        out.append({
            "bench": bench, "variant": variant, "layer": r.layers[li], "expert": int(e),
            "lost_touched": int(touched[li, e]), "lost": int(lost.sum()), "lost_share": float(lost_share[li, e]),
            "both_correct_share": ks, "lift": float(lost_share[li, e] / ks) if ks > 0 else float("nan"),
            "top_domain": _top_label(domains, lost_weight[:, li, e]),
        })
    return out


def _top_label(labels: np.ndarray, weights: np.ndarray) -> str | None:
    if weights.sum() <= 0 or all(label == NO_DOMAIN for label in labels):
        return None
    names = sorted(set(labels))
    return max(names, key=lambda n: weights[labels == n].sum())


def _usage(r: Routing, rows: list[dict], dropped: np.ndarray, bench: str, variant: str) -> list[dict]:
    """Mean share of each dropped expert in its layer, per domain (all problems when there are none)."""
    shares = _layer_shares(r)
    domains = np.array([row["domain"] or NO_DOMAIN for row in rows], dtype=object)
    groups = ["all"] if all(d == NO_DOMAIN for d in domains) else sorted(set(domains))
    out = []
    for group in groups:
        mask = np.ones(len(rows), dtype=bool) if group == "all" else domains == group
        mean = shares[mask].mean(axis=0)
        for li, e in zip(*np.nonzero(dropped)):
            out.append({"bench": bench, "variant": variant, "domain": group, "layer": r.layers[li], "expert": int(e),
                        "share": float(mean[li, e])})
    return out


# -- from a comparison's inputs -------------------------------------------------------------------


def expert_tables(store: ResultsStore, rows: pa.Table, pairs: list[Pair], baseline: str, variants: list[str],
                  drop_maps: dict[str, str | dict] | None = None) -> tuple[dict[str, pa.Table], list[str]]:
    """The exposure tables of a comparison (empty when the baseline has no routing) and notes on the
    variants left out. `drop_maps` (variant -> file or mapping) wins over the provenance."""
    from omk_ray.variants.dropmap import DropMapError, load_drop_map

    unknown = sorted(set(drop_maps or {}) - set(variants))
    if unknown:
        raise AnalysisError(f"drop maps given for {unknown}, which are not compared (variants: {', '.join(variants)})")
    base_rows = rows.filter(pc.equal(rows["variant"], baseline))
    routing = baseline_routing(store, baseline, base_rows.select(["variant_fingerprint", "recipe_hash"]))
    if not routing:
        stale = RoutingTable(store.root).shard_paths(baseline)
        note = (f"no dropped-expert exposure: the routing of {baseline} is of other samples (weights or recipe "
                f"changed since): route it again with `omk-ray route RESULTS --variant {baseline} --force`")
        return {}, [note] if stale else []
    notes, chosen = [], {}
    for variant in variants:
        given = (drop_maps or {}).get(variant)
        if isinstance(given, dict):
            chosen[variant] = given
        elif given:
            try:
                chosen[variant] = load_drop_map(given)
            except DropMapError as err:
                raise AnalysisError(f"--drop-map of {variant!r}: {err}") from None
        else:
            found, where = variant_drop_map(store, variant)
            if found is None:
                notes.append(f"{variant}: no dropped-expert exposure ({where})")
            else:
                chosen[variant] = found
    missing = sorted(set(pc.unique(base_rows["bench"]).to_pylist()) - set(routing))
    if missing and chosen:
        notes.append(f"no routing of {baseline} on {', '.join(missing)} (run `omk-ray route RESULTS --variant "
                     f"{baseline}`): no exposure there")
    labels: dict[str, dict[str, tuple]] = {}
    for b, d, dom, sub in zip(*(base_rows[c].to_pylist() for c in ("bench", "doc_id", "domain", "subdomain"))):
        labels.setdefault(b, {})[d] = (dom, sub)
    return exposure_tables(routing, chosen, pairs, labels) if chosen else {}, notes

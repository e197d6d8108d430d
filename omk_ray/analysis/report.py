"""Write a comparison out: report.md, report.html, card.md, tables/*.parquet and summary.json.

Each file is written to a temporary name and renamed, so a report folder never holds a
half-written file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omk_ray.analysis.compare import Comparison
from omk_ray.analysis.html import to_html
from omk_ray.analysis.markdown import to_markdown
from omk_ray.files import write_text_atomic
from omk_ray.results.store import write_parquet

if TYPE_CHECKING:
    from omk_ray.analysis.card import CardOptions


def write_report(comparison: Comparison, out: str | Path, html: bool = True, card: "CardOptions | None" = None
                 ) -> dict[str, Path]:
    """Every file of the report; `card` sets the model-card section's options (card.md)."""
    from omk_ray.analysis.card import CardOptions, to_card

    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, table in comparison.tables.items():
        paths[name] = write_parquet(table, out / "tables" / f"{name}.parquet")
    paths["markdown"] = write_text_atomic(out / "report.md", to_markdown(comparison))
    paths["card"] = write_text_atomic(out / "card.md", to_card(comparison, card or CardOptions()))
    if html:
        paths["html"] = write_text_atomic(out / "report.html", to_html(comparison))
    paths["summary"] = write_text_atomic(out / "summary.json", json.dumps(summary(comparison, out, paths), indent=2))
    return paths


def summary(c: Comparison, out: Path | None = None, paths: dict[str, Path] | None = None) -> dict[str, Any]:
    """The headline numbers and every flag, as plain JSON (NaN written as null)."""
    data = {
        "baseline": c.baseline,
        "variants": c.variants,
        "benches": c.benches,
        "results": c.results,
        "primary_metrics": c.primary,
        "correction": c.correction,
        "cohorts": c.guard.cohorts,
        "headline": c.rows("headline"),
        "canary": {v: {"passed": x.passed, "stopped": x.stopped, "reasons": x.reasons, "run_id": x.run_id}
                   for v, x in c.canary.items()},
        "scoreboard": c.rows("scoreboard"),
        "agreement": c.rows("agreement"),
        "anomalies": c.rows("anomalies"),
        "notes": [{"bench": n.bench, "variant": n.variant, "mark": n.mark, "text": n.text} for n in c.guard.notes]
        + [{"text": t} for t in c.notes],
        "files": {k: str(p.relative_to(out) if out else p) for k, p in (paths or {}).items()},
    }
    return _clean(data)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value



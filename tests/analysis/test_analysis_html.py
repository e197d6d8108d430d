"""The HTML report opens offline in headless Chromium, with no console errors, and its plots render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers.samples import sample, write_store
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.html import to_html
from omk_ray.analysis.report import write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)"
)
WIDTH, HEIGHT = 1280, 9000
PLOTS = ("deltas", "tokens", "domains", "agreement")

# Written into a copy of the report: the laid-out box of every plot, for --dump-dom to print.
MEASURE = """<script>
const boxes = [...document.querySelectorAll('figure.plot')].map(f => {
  const r = f.querySelector('svg').getBoundingClientRect();
  return {id: f.id, x: r.x, y: r.y, width: r.width, height: r.height};
});
const page = {height: document.documentElement.scrollHeight, boxes: boxes};
const out = document.createElement('pre'); out.id = 'boxes'; out.textContent = JSON.stringify(page);
document.body.appendChild(out);
</script>"""


def chromium(tmp: Path, url: str, *args: str, height: int = HEIGHT) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
             f"--window-size={WIDTH},{height}"]
    return subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True, timeout=90)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def colored_share(image) -> float:
    """Share of clearly coloured pixels: tables and text are grey, the plots' marks are not."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float(np.mean(rgb.max(axis=2) - rgb.min(axis=2) > 60))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("html")
    rows = []
    domains = ["Physics", "Chemistry", "Biology"]
    for v, shift in (("128e", 0), ("v4", 1), ("v4-geomean", 3)):
        for i in range(30):
            for bench in ("gpqa", "gsm8k"):
                ok = (i * 7 + shift * (i % 5)) % 10 < 7
                rows.append(sample(v, bench, f"{bench}-{i}", ok, domain=domains[i % 3] if bench == "gpqa" else None,
                                   subdomain=f"{domains[i % 3]} (general)" if bench == "gpqa" else None,
                                   response="r" * (40 + 13 * i * (1 + shift)), completion_tokens=10 + 3 * i * (1 + shift)))
    write_store(tmp / "results", rows)
    c = compare(tmp / "results", CompareOptions(baseline="128e", resamples=500))
    write_report(c, tmp / "out")
    return tmp, c


def test_report_opens_offline_and_every_plot_renders(report):
    from PIL import Image

    tmp, c = report
    page = tmp / "out" / "report.html"
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the report must not load anything"
    assert "<script" not in text
    for key in PLOTS:
        assert f'id="plot-{key}"' in text

    measured = tmp / "measured.html"
    measured.write_text(text.replace("</body>", MEASURE + "</body>"))
    dom = chromium(tmp, measured.as_uri(), "--dump-dom").stdout
    layout = json.loads(re.search(r'<pre id="boxes">(.*?)</pre>', dom, re.S).group(1))
    boxes = layout["boxes"]
    assert [b["id"] for b in boxes] == [f"plot-{k}" for k in PLOTS]
    assert layout["height"] <= HEIGHT, "the page is taller than the screenshot; raise HEIGHT"

    shot = tmp / "report.png"
    run = chromium(tmp, page.as_uri(), f"--screenshot={shot}", height=layout["height"])
    assert shot.exists(), run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    image = Image.open(shot)
    assert colored_share(image) > 0.002
    for box in boxes:
        assert box["width"] > 200 and box["height"] > 100, box
        plot = image.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
        assert colored_share(plot) > 0.002, f"{box['id']} rendered blank"
        assert len(np.unique(np.asarray(plot.convert("RGB")).reshape(-1, 3), axis=0)) > 20, f"{box['id']} has no drawing"


def test_the_checks_catch_a_broken_page(report):
    """The same checks see console errors and a page without plots."""
    from PIL import Image

    tmp, c = report
    bare = tmp / "bare.html"
    bare.write_text(to_html(c, plots={}).replace("</body>", "<script>console.error('broken plot')</script></body>"))
    shot = tmp / "bare.png"
    run = chromium(tmp, bare.as_uri(), f"--screenshot={shot}", height=2000)
    assert any("broken plot" in m for m in console_messages(run.stderr))
    assert colored_share(Image.open(shot)) < 0.001

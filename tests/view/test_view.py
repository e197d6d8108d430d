"""`omk-ray view` served for real on 127.0.0.1 (a subprocess on a free port), read by headless Chromium.

The card's "max LOST" link leads to problem pages whose two answers are the Parquet rows; a hostile
completion is shown as text and never runs; the live page of a running grid advances as shards land.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urljoin
from urllib.error import HTTPError
from urllib.request import urlopen

import lxml.html
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from helpers import write_bench, write_grid
from helpers.samples import sample, write_store
from omk_ray.cli import app
from omk_ray.results.schema import SAMPLE_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (`make system-deps` "
                                    "installs Debian's chromium as root; elsewhere it cannot be installed)")
# Runs only if the page lets it: it marks the document and logs, which the checks look for.
HOSTILE = ('<script>document.documentElement.setAttribute("data-hacked","script");console.log("HACKED")</script>'
           '<img src=x onerror="document.documentElement.setAttribute(\'data-hacked\',\'img\')">')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`omk-ray view RESULTS` in a subprocess, on 127.0.0.1 and a free port."""

    def __init__(self, results: Path, *args: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen([sys.executable, "-m", "omk_ray", "view", str(results), "--port", str(self.port),
                                      *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180  # a loaded 2-core machine imports slowly
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"omk-ray view exited: {self.proc.stdout.read()}")
            try:
                with urlopen(self.base + "/live", timeout=30):
                    return
            except HTTPError:
                return  # it answers (a 503 before any comparison can be made)
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError("omk-ray view did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serve():
    started = []

    def start(results: Path, *args: str) -> Server:
        started.append(Server(results, *args))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def browse(tmp: Path, url: str) -> tuple[lxml.html.HtmlElement, str]:
    """The DOM as Chromium leaves it after running the page (scripts included), and its console."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--v=0", "--virtual-time-budget=3000"]
    run = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip(), run.stderr[-2000:]
    return lxml.html.fromstring(run.stdout), run.stderr


def link(dom, text: str) -> str:
    found = [a.get("href") for a in dom.iter("a") if a.text_content().strip() == text]
    assert found, f"no link {text!r}"
    return found[0]


def parquet_row(results: Path, variant: str, bench: str, doc: str) -> dict:
    table = ds.dataset(str(results / "samples" / variant / bench), schema=SAMPLE_SCHEMA, format="parquet").to_table(
        filter=ds.field("doc_id") == doc)
    assert table.num_rows == 1
    return table.to_pylist()[0]


@pytest.fixture
def results(tmp_path) -> Path:
    """toy (the baseline) right on d0..d11; max wrong on the odd ones, d1 with a hostile completion, d3 empty."""
    rows = []
    for i in range(12):
        domain = "arith" if i % 3 else "upper"
        rows.append(sample("toy", "toy", f"d{i}", True, domain=domain, reasoning=f"thinking about d{i} <b>bold</b>"))
        text = HOSTILE if i == 1 else "" if i == 3 else f"max answers {i * 7}"  # d3: a silent-empty anomaly
        rows.append(sample("max", "toy", f"d{i}", i % 2 == 0, domain=domain, response=text,
                           extracted_answer=text if i == 1 else str(i * 7), score_detail="test 2: got 7, expected 6"))
    write_store(tmp_path / "results", rows)
    return tmp_path / "results"


@needs_chromium
@pytest.mark.slow
def test_the_lost_link_leads_to_the_parquet_rows_and_hostile_text_stays_text(results, serve, tmp_path):
    server = serve(results, "--baseline", "toy")
    card, _ = browse(tmp_path, server.base + "/")
    lost = link(card, "6 (max LOST)")  # the agreement matrix's count, as the card prints it
    listing, _ = browse(tmp_path, urljoin(server.base, lost))
    docs = [a.text_content() for a in listing.find_class("doc")]
    assert docs == ["d1", "d3", "d5", "d7", "d9", "d11"]
    assert listing.get_element_by_id("count").text_content() == "6 problems"

    anomalies, _ = browse(tmp_path, urljoin(server.base, link(card, "1/12")))  # the anomalies table's count
    assert [a.text_content() for a in anomalies.find_class("doc")] == ["d3"]

    first = next(a.get("href") for a in listing.find_class("doc"))
    page, console = browse(tmp_path, urljoin(server.base, first))
    for i, variant in enumerate(("toy", "max")):
        side = page.get_element_by_id(f"side-{i}")
        assert side.get("data-variant") == variant
        row = parquet_row(results, variant, "toy", "d1")
        assert side.find_class("response")[0].text_content() == row["response"]
        assert side.find_class("extracted")[0].text_content() == row["extracted_answer"]
    assert page.get_element_by_id("side-0").find_class("reasoning")[0].text_content() == "thinking about d1 <b>bold</b>"
    assert page.get_element_by_id("side-1").find_class("detail")[0].text_content() == "test 2: got 7, expected 6"
    assert [a.get("rel") for a in page.find_class("steps")[0].iter("a")] == ["next"]  # d1 opens the lost list
    step, _ = browse(tmp_path, urljoin(server.base, page.find_class("steps")[0].find("a").get("href")))
    assert step.get_element_by_id("side-1").find_class("response")[0].text_content() == ""  # d3, the empty answer
    assert [a.get("rel") for a in step.find_class("steps")[0].iter("a")] == ["previous", "next"]

    # The hostile completion: its literal text is on the page, none of it became markup, none of it ran.
    assert page.get_element_by_id("side-1").find_class("response")[0].text_content() == HOSTILE
    assert page.xpath("//script") == [] and page.xpath("//img") == [] and page.xpath("//b") == []
    assert page.get("data-hacked") is None
    assert "HACKED" not in console
    diff = page.find_class("diff")[0].text_content()
    assert "- d1" in diff and f"+ {HOSTILE}" in diff


@needs_chromium
@pytest.mark.slow
def test_filters_and_search_narrow_the_list(results, serve, tmp_path):
    server = serve(results, "--baseline", "toy")
    base = server.base + "/problems?variant=max&bench=toy"
    cases = {"&outcome=both_correct&domain=upper": ["d0", "d6"], "&outcome=lost&domain=upper": ["d3", "d9"],
             "&q=ANSWERS+35": ["d5"], "&q=data-hacked": ["d1"], "&outcome=gained": []}
    for query, expected in cases.items():
        dom, _ = browse(tmp_path, base + query)
        assert [a.text_content() for a in dom.find_class("doc")] == expected, query


def test_view_refuses_a_non_loopback_host_a_missing_folder_an_unknown_baseline_a_busy_port(results, tmp_path):
    refused = CliRunner().invoke(app, ["view", str(results), "--host", "0.0.0.0"])
    assert refused.exit_code == 2
    assert "not a loopback address" in refused.output and "--expose" in refused.output
    missing = CliRunner().invoke(app, ["view", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such results folder" in missing.output
    unknown = CliRunner().invoke(app, ["view", str(results), "--baseline", "nope"])
    assert unknown.exit_code == 2 and "baseline 'nope' has no samples" in unknown.output and "max, toy" in unknown.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = CliRunner().invoke(app, ["view", str(results), "--port", str(taken.getsockname()[1])])
    assert busy.exit_code == 2 and "give another --port" in busy.output


def run_cells(grid, store, variants: list[str]) -> None:
    """Generate the missing samples of these variants through the farm's own row path (echo engines)."""
    from omk_ray.benches import make_bench
    from omk_ray.engines import engine_class
    from omk_ray.farm.planner import make_plan
    from omk_ray.farm.rows import RowContext, generate_rows

    plan = make_plan(grid, store)
    for w in plan.work:
        if w.samples and w.variant in variants:
            spec = grid.variant(w.variant)
            engine = engine_class(spec.engine)(spec, plan.model_paths[w.variant])
            ctx = RowContext("live", w.variant, plan.fingerprints[w.variant], w.bench, w.recipe, spec.engine)
            store.write_shard(generate_rows(engine, make_bench(grid.bench(w.bench)), ctx, w.samples), w.variant,
                              w.bench, f"u-{w.variant}")


def wait_for(url: str, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urlopen(url, timeout=60) as page:
            if text in page.read().decode():
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} never showed {text!r}")


def cells(dom) -> dict[str, list[str]]:
    rows = dom.get_element_by_id("cells").findall(".//tr")[1:]
    return {r.findall("td")[0].text_content(): [td.text_content().strip() for td in r.findall("td")] for r in rows}


@needs_chromium
@pytest.mark.slow
def test_the_live_page_of_a_running_grid_advances(tmp_path, serve):
    from omk_ray.analysis.compare import CompareOptions, compare
    from omk_ray.analysis.sections import signed
    from omk_ray.config import grid_to_dict, load_grid
    from omk_ray.results.folder_lock import writing
    from omk_ray.results.store import ResultsStore

    bench = write_bench(tmp_path / "b.jsonl", 6)
    grid = load_grid(write_grid(tmp_path / "grid.yaml", [{"name": "base", "engine": "echo", "model": "m"},
                                                         {"name": "arm", "engine": "echo", "model": "m2"}],
                                [{"name": "copy", "kind": "jsonl", "source": str(bench)}]))
    store = ResultsStore(tmp_path / "results")
    run = store.new_run("live-1")
    manifest = {"run_id": "live-1", "status": "running", "config": grid_to_dict(grid)}
    with writing(store.root, "live-1"):
        run.write_manifest(manifest)
        run_cells(grid, store, ["base"])
        server = serve(store.root)  # no --baseline: the grid's first variant
        first, _ = browse(tmp_path, server.base + "/live")
        assert first.get_element_by_id("status").text_content() == "running"
        assert first.xpath("//meta[@http-equiv='refresh']")
        assert cells(first)["base (baseline)"][2] == "6 / 6" and cells(first)["arm"][2] == "0 / 6"
        assert cells(first)["arm"][9] == ""  # no paired Δ before the arm has samples
        assert cells(first)["arm"][6] == "off" and cells(first)["arm"][7] == "off"  # no canary, no stages

        run_cells(grid, store, ["arm"])
        run.event("canary", variant="arm", passed=False, reasons=["p10 length 1 < 2"])  # as the scheduler logs it
        run.event("engine_starting", variant="arm", engine="omk-live-1-arm-0")
        stop = "stopped at 6/6: Δ <= -41 pp (observed -50.0 pp), 95% anytime-valid (futility, bench copy)"
        run.event("stage_stop", variant="arm", reason=stop)  # as the loop logs a stop by farm.stages
        wait_for(server.base + "/live", "on 6</a>")  # a comparison slower than SYNC_S is recomputed in the background
        second, _ = browse(tmp_path, server.base + "/live")
        assert cells(second)["arm"][2] == "6 / 6" and cells(second)["arm"][6] == "failed"
        assert cells(second)["arm"][7] == stop and cells(second)["base (baseline)"][7] == "off"
        assert cells(second)["arm"][5] == "starting" and cells(second)["base (baseline)"][5] == ""
        board = compare(store.root, CompareOptions(baseline="base")).rows("scoreboard")[0]  # the card's numbers
        assert cells(second)["arm"][9] == (f"{signed(board['delta_pp'])} [{signed(board['ci_low_pp'])}, "
                                           f"{signed(board['ci_high_pp'])}] on 6")
        assert second.get_element_by_id("progress").text_content().startswith("12 / 12 samples done")
        run.write_manifest({**manifest, "status": "finished"})
    final, _ = browse(tmp_path, server.base + "/live")
    assert final.get_element_by_id("status").text_content() == "finished"
    assert not final.xpath("//meta[@http-equiv='refresh']")
    assert "final numbers" in final.get_element_by_id("progress").text_content()
    assert cells(final)["arm"][2] == "6 / 6"


def test_a_problem_shows_its_newest_row_and_reads_only_its_folders(results):
    """A sample stored twice (a failed try, then its retry) shows the retry; another bench's shards are not read."""
    from omk_ray.view.data import ViewData

    retry = sample("max", "toy", "d5", True, response="retried 35", started_at=datetime(2026, 5, 15, tzinfo=timezone.utc))
    failed = sample("max", "toy", "d5", False, response=None, error="engine died")
    write_store(results, [failed])
    write_store(results, [retry])
    (results / "samples" / "max" / "other").mkdir()
    (results / "samples" / "max" / "other" / "part-u0-broken.parquet").write_text("not parquet")  # never opened
    base, mine = ViewData(results, "toy").problem(["toy", "max"], "toy", "d5")
    assert base.row["response"] == "The answer is d5." and mine.row["response"] == "retried 35"
    assert mine.row["metrics"] == {"exact_match": 1.0}


def test_a_slow_comparison_is_recomputed_in_the_background(results, monkeypatch):
    """While a large store's comparison is recomputed, the pages keep the last one (and say it is updating)."""
    from omk_ray.view import data as view_data

    viewer = view_data.ViewData(results, "toy")
    first, _ = viewer.comparison()
    monkeypatch.setattr(view_data, "SYNC_S", -1.0)  # as if every comparison took longer than SYNC_S
    write_store(results, [sample("toy", "more", "e0", True), sample("max", "more", "e0", False)])
    shown, _ = viewer.comparison()
    assert shown is first and viewer.updating
    deadline = time.monotonic() + 120
    while viewer.updating and time.monotonic() < deadline:
        time.sleep(0.1)
    newer, _ = viewer.comparison()
    assert newer is not first and newer.benches == ["more", "toy"] and not viewer.updating

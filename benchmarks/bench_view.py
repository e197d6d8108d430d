"""`omk-ray view` at scale. Prints its figures; run with `.venv/bin/python benchmarks/bench_view.py`.

Builds the synthetic store of bench_compare.py (1,000,000 sample rows: 10 variants x 10 benches x
10,000 problems, long-tailed texts), serves it with the viewer's app on 127.0.0.1 (uvicorn in a
thread, real HTTP), and times the pages: the card with the scoreboard (cold: `compare` runs; warm:
cached), a list of lost problems, a text search, and problem pages (only the two variants' shard
folders of one bench and the page's columns are read). Prints each figure with the load average
beside it and the ratios to the problem page.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
from bench_compare import build_store  # noqa: E402 (the same synthetic store as the compare benchmark)

from omk_ray.view.app import make_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def timed(client: httpx.Client, path: str, times: int = 1) -> tuple[float, int]:
    """Median seconds of `times` GETs, and the page's size."""
    walls, size = [], 0
    for _ in range(times):
        t0 = time.perf_counter()
        response = client.get(path)
        walls.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code} {response.text[:300]}")
        size = len(response.content)
    return statistics.median(walls), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--benches", type=int, default=10)
    parser.add_argument("--docs", type=int, default=10_000, help="problems per bench")
    parser.add_argument("--keep", type=Path, help="build the store here and keep it (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use the store already there")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-view-") as tmp:
        root = args.keep or Path(tmp) / "results"
        rows = args.variants * args.benches * args.docs
        t0 = time.perf_counter()
        if not (args.reuse and (root / "samples").is_dir()):
            build_store(root, args.variants, args.benches, args.docs)
        size = sum(p.stat().st_size for p in (root / "samples").rglob("*.parquet"))
        print(f"store: {rows:,} rows ({args.variants} variants x {args.benches} benches x {args.docs:,} problems), "
              f"{size / 2**20:.0f} MiB Parquet, built in {time.perf_counter() - t0:.1f} s; {load()}")

        port = free_port()
        server = uvicorn.Server(uvicorn.Config(make_app(root, "128e"), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                figures = {}
                figures["card + scoreboard, cold (compare runs)"] = timed(client, "/")
                figures["card + scoreboard, warm (cached)"] = timed(client, "/", 3)
                figures["lost problems of v1 on bench0"] = timed(client, "/problems?variant=v1&bench=bench0&outcome=lost", 3)
                figures["text search on bench0 (v1 and 128e)"] = timed(client, "/problems?variant=v1&bench=bench0&q=reconsider")
                pages = [timed(client, f"/problem?variant=v1&bench=bench{b}&doc=bench{b}/{d}")
                         for b in range(min(3, args.benches)) for d in (17, 4321, args.docs - 1)]
                figures["problem page (median of 9)"] = (statistics.median(p[0] for p in pages), pages[0][1])
        finally:
            server.should_exit = True
            thread.join(timeout=30)
        page = figures["problem page (median of 9)"][0]
        for name, (wall, nbytes) in figures.items():
            print(f"{name}: {wall * 1000:,.0f} ms ({nbytes / 1024:,.0f} KiB; {wall / page:,.1f}x a problem page); {load()}")


if __name__ == "__main__":
    main()

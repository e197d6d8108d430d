"""`omk-ray view`; `omk_ray.cli` calls `register(app)` at start-up."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Optional

import typer

from omk_ray.exits import fail


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    @app.command()
    def view(
        results: Path = typer.Argument(..., help="results folder of one or more runs (a running one too)"),
        baseline: Optional[str] = typer.Option(None, "--baseline", "-b",
                                               help="the variant every other is compared with (default: the first "
                                                    "variant of the newest run's grid)"),
        port: int = typer.Option(8765, "--port", "-p", min=0, max=65535, help="port to serve on"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to serve on (loopback only unless --expose)"),
        expose: bool = typer.Option(False, "--expose", help="allow a non-loopback --host: anyone who reaches it "
                                    "reads every sample, with no login"),
    ) -> None:
        """Serve a read-only web page over RESULTS on this machine: the card with every count a link, problem pages
        (the baseline's and the variant's answers side by side), and the live grid of a running run. Blocks until Ctrl-C.

        Example: omk-ray view demo_out/results --baseline toy --port 8765
        """  # noqa: E501
        import uvicorn

        from omk_ray.analysis.samples import AnalysisError
        from omk_ray.view.app import make_app

        if not results.is_dir():
            fail(f"{results}: no such results folder")
        if not is_loopback(host) and not expose:
            fail(f"--host {host} is not a loopback address: the page has no login; add --expose to serve it there anyway")
        try:
            web = make_app(results, baseline)
        except AnalysisError as err:
            fail(str(err))
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError as err:
                fail(f"cannot serve on {host}:{port} ({err.strerror}); give another --port")
        print(f"omk-ray view: http://{host}:{port}/  (read-only; Ctrl-C stops)", flush=True)
        uvicorn.run(web, host=host, port=port, log_level="warning")

"""`omk-ray llamacpp build|info`: the pinned llama.cpp tools (see omk_ray.llamacpp.tools)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from omk_ray.exits import fail


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The pinned llama.cpp tools (llama-quantize, llama-imatrix, llama-server, "
                        "the GGUF converter), built from the llama-cpp-python sdist into a cache.",
                        no_args_is_help=True)
    app.add_typer(group, name="llamacpp")

    @group.command("build")
    def build(
        profile: str = typer.Option("cpu", "--profile", help="cpu (portable, no -march=native) or cuda (GPU nodes)."),
        flag: list[str] = typer.Option([], "--flag", help="Extra cmake flag, e.g. -DCMAKE_CUDA_ARCHITECTURES=90 "
                                       "(repeatable; part of the cache key)."),
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Parallel compile jobs (default: all cores)."),
        sdist: Optional[Path] = typer.Option(None, "--sdist", help="A downloaded llama_cpp_python-*.tar.gz "
                                             "(default: pip downloads the pinned one)."),
    ):
        """Build the tools into the cache unless they are there already (5-8 min on 2 cores); prints the folder."""
        from omk_ray.llamacpp.tools import ToolsBuildError, build_tools

        try:
            tools = build_tools(profile, tuple(flag), jobs, sdist, log=lambda m: typer.echo(m, err=True))
        except (ToolsBuildError, ValueError) as err:
            fail(str(err))
        typer.echo(str(tools.root))

    @group.command("info")
    def info():
        """The build omk-ray will use and its versions: $OMK_RAY_LLAMACPP, else the newest in the cache of the profile $OMK_RAY_LLAMACPP_PROFILE names, else cuda where a CUDA device is visible and cpu where none is."""
        from omk_ray.llamacpp.tools import ToolsMissing, cache_root, find_tools

        try:
            tools = find_tools()
        except ToolsMissing as err:
            fail(str(err))
        typer.echo(f"{tools.version}\n{tools.root}  (cache: {os.environ.get('OMK_RAY_LLAMACPP') or cache_root()})")
        typer.echo(json.dumps(tools.info, indent=1))

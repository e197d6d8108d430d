"""llama.cpp as a managed dependency, built from the pinned `llama-cpp-python` source
distribution (which vendors llama.cpp) into a cache folder keyed by version and build flags:

    <cache>/<llama-cpp-python version>-<profile>-<hash of the cmake flags>/
        bin/             llama-quantize, llama-imatrix, llama-server (static executables)
        convert/         convert_hf_to_gguf.py, conversion/ and gguf-py/ of the same llama.cpp
        build.json       versions, llama.cpp commit, flags, sdist sha256, build time

`<cache>` is `$OMK_RAY_LLAMACPP_CACHE`, else `~/.cache/omk-ray/llama.cpp`. A build that is
there is reused; `build_tools()` builds it (under a file lock, staged then renamed) and
`find_tools()` returns the one to use: `$OMK_RAY_LLAMACPP` (a build folder) when set, else
the newest complete build of the pinned version in the wanted profile: `$OMK_RAY_LLAMACPP_PROFILE`
when set (only that one will do), else cuda where a CUDA device is visible and cpu where none is.
A GPU process with only a cpu build falls back to it with a warning (llama-server then runs on
the CPU); a CPU process with only a cuda build is refused (it would need a GPU).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from omk_ray.config import stable_hash
from omk_ray.devices import cuda_visible
from omk_ray.files import file_sha256

LLAMA_CPP_PYTHON = "0.3.36"  # pins llama.cpp (its CHANGELOG names the commit)
TARGETS = ("llama-quantize", "llama-imatrix", "llama-server")
COMMON_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF")
PROFILES = {
    # portable CPU code (no -march=native: the cache may be shared by different machines)
    "cpu": ("-DGGML_NATIVE=OFF",),
    # GPU nodes: CUDA kernels; add -DCMAKE_CUDA_ARCHITECTURES=90 (H100/H200) to build only yours
    "cuda": ("-DGGML_NATIVE=OFF", "-DGGML_CUDA=ON"),
}
INFO_NAME = "build.json"
PROFILE_ENV = "OMK_RAY_LLAMACPP_PROFILE"
CONVERT_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


log = logging.getLogger("omk_ray.llamacpp")


class ToolsMissing(RuntimeError):
    """The llama.cpp tools are not built (or not where they were said to be)."""


class ToolsBuildError(RuntimeError):
    """Downloading or compiling llama.cpp failed; the message holds the failing step's output."""


@dataclass(frozen=True)
class Tools:
    root: Path
    info: dict

    def bin(self, name: str) -> Path:
        path = self.root / "bin" / name
        if not path.is_file():
            raise ToolsMissing(f"{path}: no such tool in the llama.cpp build {self.root}")
        return path

    @property
    def converter(self) -> Path:
        return self.root / "convert" / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.root / "convert" / "gguf-py"

    @property
    def version(self) -> str:
        """e.g. `llama.cpp 0c1e57098 (llama-cpp-python 0.3.36, cpu)`."""
        i = self.info
        return f"llama.cpp {i['llama_cpp_commit']} (llama-cpp-python {i['llama_cpp_python']}, {i['profile']})"

    @property
    def identity(self) -> dict:
        """What provenance records of the tools."""
        keys = ("llama_cpp_python", "llama_cpp_commit", "profile", "flags", "sdist_sha256")
        return {k: self.info[k] for k in keys} | {"path": str(self.root)}


def cache_root() -> Path:
    return Path(os.environ.get("OMK_RAY_LLAMACPP_CACHE") or Path.home() / ".cache" / "omk-ray" / "llama.cpp")


def build_flags(profile: str = "cpu", extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    if profile not in PROFILES:
        raise ValueError(f"unknown llama.cpp build profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return [*COMMON_FLAGS, *PROFILES[profile], *extra]


def build_dir(profile: str = "cpu", extra: tuple[str, ...] | list[str] = (), root: Path | None = None) -> Path:
    flags = build_flags(profile, extra)
    return (root or cache_root()) / f"{LLAMA_CPP_PYTHON}-{profile}-{stable_hash(flags, 8)}"


def find_tools() -> Tools:
    """The llama.cpp build to use (see the module doc)."""
    explicit = os.environ.get("OMK_RAY_LLAMACPP")
    if explicit:
        tools = _load(Path(explicit))
        if tools is None:
            raise ToolsMissing(f"OMK_RAY_LLAMACPP={explicit}: not a complete llama.cpp build (no {INFO_NAME})")
        return tools
    root = cache_root()
    builds = [t for p in (sorted(root.glob(f"{LLAMA_CPP_PYTHON}-*")) if root.is_dir() else [])
              if (t := _load(p)) is not None]
    if not builds:
        raise ToolsMissing(
            f"llama.cpp {LLAMA_CPP_PYTHON} is not built under {root}: run `make llamacpp` "
            f"(or `omk-ray llamacpp build`; on a GPU node `--profile cuda`)")
    asked = os.environ.get(PROFILE_ENV)
    if asked is not None and asked not in PROFILES:
        raise ToolsMissing(f"{PROFILE_ENV}={asked}: unknown profile; choose one of {', '.join(PROFILES)}")
    wanted = asked or ("cuda" if cuda_visible() else "cpu")
    mine = [t for t in builds if t.info.get("profile") == wanted]
    if mine:
        return max(mine, key=lambda t: t.info["built_at"])
    have = ", ".join(sorted({str(t.info.get("profile")) for t in builds}))
    build = f"`omk-ray llamacpp build --profile {wanted}` (or `make llamacpp LLAMACPP_PROFILE={wanted}`)"
    if asked:
        raise ToolsMissing(f"{PROFILE_ENV}={asked}: no {asked} build of llama.cpp {LLAMA_CPP_PYTHON} under {root} "
                           f"(builds there: {have}); run {build}")
    if wanted == "cpu":
        raise ToolsMissing(f"no CUDA device is visible and llama.cpp {LLAMA_CPP_PYTHON} has no cpu build under {root} "
                           f"(builds there: {have}); run {build}, or set {PROFILE_ENV}=cuda to use the cuda one")
    fallback = max((t for t in builds if t.info.get("profile") == "cpu"), key=lambda t: t.info["built_at"])
    log.warning("a CUDA device is visible but llama.cpp %s has no cuda build under %s: using the cpu build %s "
                "(llama-server runs on the CPU); run %s", LLAMA_CPP_PYTHON, root, fallback.root, build)
    return fallback


def _load(path: Path) -> Tools | None:
    info = path / INFO_NAME
    return Tools(path.resolve(), json.loads(info.read_text())) if info.is_file() else None


def build_tools(profile: str = "cpu", extra: tuple[str, ...] | list[str] = (), jobs: int | None = None,
                sdist: Path | None = None, root: Path | None = None, log=print) -> Tools:
    """Build the tools for these flags unless they are in the cache already; returns them."""
    final = build_dir(profile, extra, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (tools := _load(final)) is not None:
            log(f"llama.cpp: reusing {final}")
            return tools
        start = time.time()
        with tempfile.TemporaryDirectory(prefix=f".build-{final.name}-", dir=final.parent) as tmp:
            work = Path(tmp)
            sdist = sdist or _download(work, log)
            src = _extract(sdist, work / "src")
            flags = build_flags(profile, extra)
            commit = llama_cpp_commit(src.parent.parent)
            build_log = work / "build.log"
            _run(["cmake", "-S", str(src), "-B", str(work / "build"), *flags,
                  f"-DLLAMA_BUILD_COMMIT={commit}"], "configure", log, build_log)
            _run(["cmake", "--build", str(work / "build"), "--config", "Release", "-j", str(jobs or os.cpu_count() or 1),
                  "--target", *TARGETS], "build", log, build_log)
            stage = work / "out"
            (stage / "bin").mkdir(parents=True)
            for target in TARGETS:
                shutil.copy2(work / "build" / "bin" / target, stage / "bin" / target)
            (stage / "convert").mkdir()
            for name in CONVERT_FILES:
                copy = shutil.copytree if (src / name).is_dir() else shutil.copy2
                copy(src / name, stage / "convert" / name)
            shutil.copy2(work / "build.log", stage / "build.log")
            info = {
                "llama_cpp_python": LLAMA_CPP_PYTHON,
                "llama_cpp_commit": commit,
                "profile": profile,
                "flags": flags,
                "targets": list(TARGETS),
                "sdist_sha256": file_sha256(sdist),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.time() - start, 1),
                "cmake": subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
                "python": sys.version.split()[0],
            }
            (stage / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
            os.rename(stage, final)
        log(f"llama.cpp: built {final} in {time.time() - start:.0f} s")
        return _load(final)


def llama_cpp_commit(sdist_root: Path) -> str:
    """The llama.cpp commit a llama-cpp-python release vendors, from its CHANGELOG."""
    text = (sdist_root / "CHANGELOG.md").read_text()
    section = text.split(f"## [{LLAMA_CPP_PYTHON}]", 1)[-1]
    found = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section)
    return found.group(1) if found else "unknown"


def _download(work: Path, log) -> Path:
    log(f"llama.cpp: downloading the llama-cpp-python {LLAMA_CPP_PYTHON} source distribution")
    _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q",
          f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(work)], "download", log)
    found = sorted(work.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise ToolsBuildError(f"pip download left no llama_cpp_python-*.tar.gz in {work}")
    return found[0]


def _extract(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist; returns its vendor/llama.cpp folder."""
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    found = sorted(dest.glob("*/vendor/llama.cpp/CMakeLists.txt"))
    if not found:
        raise ToolsBuildError(f"{sdist}: no vendor/llama.cpp inside (is it a llama-cpp-python sdist?)")
    return found[0].parent


def _run(cmd: list[str], step: str, log, log_file: Path | None = None) -> None:
    """Run one step, its output appended to log_file; cmake's progress (per target) is shown every 10%."""
    log(f"llama.cpp {step}: {' '.join(cmd)}")
    lines: list[str] = []
    shown = -10
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc, \
            open(log_file or os.devnull, "a") as out:
        for line in proc.stdout:
            out.write(line)
            lines = [*lines[-80:], line]
            progress = re.match(r"\[\s*(\d+)%\]", line)
            percent = int(progress.group(1)) if progress else None
            if percent is not None and (percent >= shown + 10 or percent < shown):  # each target counts anew
                shown = percent
                log(f"llama.cpp {step}: {shown}%")
    if proc.returncode:
        tail = "".join(lines)[-4000:]
        raise ToolsBuildError(f"llama.cpp {step} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")

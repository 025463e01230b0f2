# `make test` and `make demo` install whatever is missing, then run. See README.md.
PYTHON ?= python3
CPU_TORCH ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: deps install test demo bench gpu-check clean

# torch first, pinned, only if missing: an unpinned torch would pull the multi-GB CUDA build.
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q $(CPU_TORCH)
	@$(PYTHON) -m pip install -q -r requirements-dev.txt
	@$(PYTHON) -m pip install -q --no-deps denoising-diffusion-pytorch==2.3.4

# the plain command users run (README.md, "Set-up"): builds against the torch installed by deps
install: deps
	$(PYTHON) -m pip install -q -e .

test: install
	$(PYTHON) -m pytest -q tests

demo: install
	$(PYTHON) -m ddpm_fast demo

bench: install
	mkdir -p .benchmarks
	$(PYTHON) -m pytest benchmarks/ --benchmark-only -q --benchmark-json=.benchmarks/latest.json
	$(PYTHON) -m benchmarks.report .benchmarks/latest.json

clean:
	rm -rf build *.egg-info ddpm_fast/*.so .pytest_cache

# Compiles every Triton and CUDA kernel for sm_80/sm_90 on this GPU-less machine (tools/gpu_check.py).
gpu-check: install
	$(PYTHON) -m tools.gpu_check

# The property-based suites with many more random draws than `make test`'s bounded "ci" profile.
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PYTHON) -m pytest -q tests/test_fuzz_ops.py tests/test_fuzz_api.py

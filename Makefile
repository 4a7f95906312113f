# make demo | make test | make test-full | make sanitize | make bench
# Each target bootstraps .venv on first use (torch first, then this project built against it).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
INSTALLED := $(VENV)/.installed
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')
EXT_STAMP := $(VENV)/.ext-built
export MAX_JOBS ?= 2

.PHONY: demo test test-full sanitize bench build ctest clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch must be installed before the project so the extension compiles against it
# (build isolation would fetch a second torch into a throwaway environment).
$(INSTALLED): pyproject.toml setup.py | $(PY)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install --no-build-isolation -e ".[dev]"
	touch $(INSTALLED) $(EXT_STAMP)

# Rebuilds the extension in place when a kernel source changed (ninja: only what changed).
$(EXT_STAMP): $(INSTALLED) $(CSRC)
	$(PY) setup.py build_ext --inplace
	touch $(EXT_STAMP)

build: $(EXT_STAMP)

demo: build
	$(PY) -m adaeagle_ext.demo

# The C++ test of the shared host logic, through the plain CMake build (CPU only here; the
# CUDA kernels are compiled once, by setup.py).
ctest: | $(PY)
	cmake -S . -B build/cmake -DADAEAGLE_ENABLE_CUDA=OFF -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j $(MAX_JOBS)
	ctest --test-dir build/cmake --output-on-failure

test: build ctest
	$(PY) -m pytest -q -m "not slow"

test-full: build ctest
	$(PY) -m pytest -q

# The C++ CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer: a separate CPU-only
# build in build/sanitize (the normal build is untouched), the ctest host-logic tests, then the
# op and fuzz tests with the ASan runtime preloaded; any report fails. Short fuzz budget by
# default; `HYPOTHESIS_PROFILE=long make sanitize` fuzzes longer. The CUDA kernels need a GPU:
# there, run the op tests under compute-sanitizer instead, e.g.
#   compute-sanitizer --tool memcheck .venv/bin/python -m pytest -q -k cuda \
#     python_tests/test_{build_tree,kv_compact,verify_greedy,verify_sampling,tree_attention,ldlp_mlp,linear}.py
# (and --tool racecheck / initcheck the same way).
sanitize: $(INSTALLED)
	PY=$(abspath $(PY)) scripts/sanitize.sh

# Op microbenchmarks, then a small Spec-Bench run (2 questions per task, 64 new tokens) of
# plain decoding and the HF peers; `adaeagle bench --help` for the full protocol.
bench: build
	$(PY) benchmarks/bench_ops.py --threads 2
	$(PY) -m adaeagle_ext.cli bench --per-category 2 --max-new-tokens 64 --threads 2 \
		--methods ar,hf,hf-pld --out benchmarks/results/specbench_make

clean:
	rm -rf build adaeagle_ext/_C*.so $(EXT_STAMP)

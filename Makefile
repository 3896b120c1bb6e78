# tvm-sparse: `make demo` sets everything up from a bare python3 and runs the demo;
# `make test` runs the test suite (CI calls it through .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test test-fast lint bench conformance deepsparse clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tvm_sparse.demo

# One pytest worker per core, at most 4 (each compiles with LLVM on one core and may take a few
# GB); whole test modules go to one worker, so module fixtures are built once. TEST_WORKERS=0
# runs everything in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check tvm_sparse tests benchmarks tutorials
	$(BIN)/ruff format --check tvm_sparse tests benchmarks tutorials

# One process per thread count: TVM's thread pool is sized when tvm is imported.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_models.py --threads 1
	$(BIN)/python benchmarks/bench_models.py --threads $$(nproc)
	$(BIN)/python benchmarks/bench_bert.py --threads 1
	$(BIN)/python benchmarks/bench_zoo.py --threads 1
	$(BIN)/python benchmarks/bench_zoo.py --threads $$(nproc)
	$(BIN)/python benchmarks/bench_gsc_twin.py --threads 1 --batch 1
	$(BIN)/python benchmarks/bench_gsc_twin.py --threads 0 --batch 64 --twin-batches 16,64,256

# ONNX's backend node cases (and the held-out classic CNNs) through onnxruntime, plain TVM and
# tvm-sparse, in worker processes; lists every case where tvm-sparse does worse than plain TVM.
conformance: $(STAMP)
	$(BIN)/python benchmarks/conformance.py --json conformance.json
	$(BIN)/python benchmarks/conformance.py --no-node-cases --models all --sparsities 0 0.9

deepsparse:
	bash benchmarks/setup_deepsparse.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# Two commands do everything: `make demo` (the main job) and `make test` (the tests).
# Each first creates or refreshes .venv, idempotently (a stamp file tracks the inputs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint format bench venv clean parity

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/torchdcn demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not slow"

# everything, the @pytest.mark.slow tests included (heavier checks: Triton sm_90 compile,
# inductor, the full Triton-interpreter layout matrix, ...)
test-all: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# The torchvision parity suite (parity/, not part of `make test`): a side venv with torchvision's
# torch (a CUDA build, ~6 GB; its CPU ops are what is compared), created once and kept by a stamp.
TVENV ?= ../tvenv
TVSTAMP := $(TVENV)/.installed-parity

$(TVSTAMP):
	test -x $(TVENV)/bin/python || $(PYTHON) -m venv $(TVENV)
	$(TVENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 numpy numba pytest
	touch $(TVSTAMP)

parity: $(TVSTAMP)
	OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src $(TVENV)/bin/python -m pytest -q -p no:cacheprovider parity

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_deform_conv.py
	$(BIN)/python benchmarks/bench_roi_pool.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

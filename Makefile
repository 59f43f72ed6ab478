# Two commands do all the set-up: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
STUDY  ?= studies/quickstart.yaml
# The demo profiles with untuned kernels (--trials 0) so it finishes in minutes; `nas profile` without it tunes.
DEMO_TRIALS ?= 0

.PHONY: demo test install clean

install: $(STAMP)

# Re-install only when the package definition changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p studies/runs
	$(BIN)/nas sample $(STUDY) --out studies/runs/demo-arch.yaml
	$(BIN)/nas profile $(STUDY) --trials $(DEMO_TRIALS)
	$(BIN)/nas fit-latency $(STUDY)
	$(BIN)/nas latency $(STUDY) --config studies/runs/demo-arch.yaml --measure --trials $(DEMO_TRIALS)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache

# Two commands do all the set-up: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
STUDY  ?= studies/quickstart.yaml
# The demo profiles with untuned kernels (--kernel-trials 0) so it finishes in minutes (README says how many);
# `nas profile` / `nas run` without it tune every kernel (latency.trials in the study).
DEMO_TRIALS ?= 0
DEMO_WORKERS ?= 2

.PHONY: demo test docs install clean

install: $(STAMP)

# Re-install only when the package definition changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nas run $(STUDY) --kernel-trials $(DEMO_TRIALS) --workers $(DEMO_WORKERS)

test: $(STAMP)
	$(BIN)/python -m pytest
	$(MAKE) docs

# The user guide and API reference (docs/, mkdocs.yml) into .site/; --strict: a broken link or a stale API reference
# fails the build (and so `make test`, and CI).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .pytest_cache .site

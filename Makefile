# Two commands for a new user: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
# Another interpreter gets its own virtualenv: `make test PYTHON=python3.13 VENV=.venv-3.13`.
VENV ?= .venv
BIN := $(VENV)/bin
# Flags for the demo, e.g. `make demo DEMO_ARGS="--days 3"`.
DEMO_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast ui lint lock clean bench

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else "Python 3.11, 3.12 or 3.13 is required (set PYTHON=/path/to/python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stripe-sage demo $(DEMO_ARGS)

# The whole suite, spread over TEST_WORKERS processes (pytest-xdist): much of an end-to-end test is
# waiting for a daemon, a sensor tick or a subprocess, so more processes than cores keep both cores busy.
# One test at a time is handed to a free process (--maxschedchunk 1), the slowest first (tests/conftest.py).
TEST_WORKERS ?= 4
test: $(STAMP)
	GX_ANALYTICS_ENABLED=false DAGSTER_TELEMETRY_ENABLED=false $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxschedchunk 1

# The unit tier only: pure rules, no servers (collects tests/unit alone: no Dagster/dbt imports to deselect).
test-fast: $(STAMP)
	GX_ANALYTICS_ENABLED=false DAGSTER_TELEMETRY_ENABLED=false $(BIN)/python -m pytest -q -m unit tests/unit

ui: $(STAMP)
	$(BIN)/stripe-sage ui

lint: $(STAMP)
	$(BIN)/ruff check stripe_sage_pipeline stripe_sage_sandboxes tests benchmarks
	$(BIN)/ruff format --check stripe_sage_pipeline stripe_sage_sandboxes tests benchmarks

# Re-pin every package after changing pyproject.toml.
lock:
	rm -rf /tmp/ssp-lock && $(PYTHON) -m venv /tmp/ssp-lock
	/tmp/ssp-lock/bin/python -m pip install -q --upgrade pip
	/tmp/ssp-lock/bin/python -m pip install -q -e '.[dev]'
	/tmp/ssp-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

# Stops the embedded PostgreSQL first (when it runs), then removes the virtualenv and the data folder.
clean:
	-[ -x $(BIN)/stripe-sage ] && $(BIN)/stripe-sage db stop
	rm -rf $(VENV) .data

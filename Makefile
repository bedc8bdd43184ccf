# Two commands for a new user: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test ui lint lock clean bench

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=/path/to/python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stripe-sage demo

test: $(STAMP)
	GX_ANALYTICS_ENABLED=false DAGSTER_TELEMETRY_ENABLED=false $(BIN)/python -m pytest -q

ui: $(STAMP)
	$(BIN)/stripe-sage ui

lint: $(STAMP)
	$(BIN)/ruff check stripe_sage_pipeline tests benchmarks

# Re-pin every package after changing pyproject.toml.
lock:
	rm -rf /tmp/ssp-lock && $(PYTHON) -m venv /tmp/ssp-lock
	/tmp/ssp-lock/bin/python -m pip install -q --upgrade pip
	/tmp/ssp-lock/bin/python -m pip install -q -e '.[dev]'
	/tmp/ssp-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) .data

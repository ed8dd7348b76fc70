# Set-up and everyday commands. Everything installs into .venv/ at the repository root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint ui clean

# The runtime packages at the versions the image ships (deploy/requirements.lock): the tests run
# what production runs. After changing dependencies: `.venv/bin/python deploy/lock_requirements.py`.
$(STAMP): pyproject.toml deploy/requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c deploy/requirements.lock -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xero-elt demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

ui: $(STAMP)
	$(BIN)/xero-elt ui

clean:
	-$(BIN)/xero-elt db stop
	rm -rf .local dbt_project/target

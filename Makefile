# One command each on a fresh machine: `make demo`, `make test`.
# The first target that needs it creates .venv and installs the package with its test extras.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test,lint]'
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest

demo: $(STAMP)
	$(VENV)/bin/python example_project/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check celery_redis_stream tests example_project
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py

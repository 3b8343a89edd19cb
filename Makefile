# One command each on a fresh machine: `make demo`, `make test`.
# The first target that needs it creates .venv and installs the package with its test extras.
# The demo has a venv of its own, .venv-demo: the package's runtime dependencies and
# example_project/requirements.txt only, as a user's project would have.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
DEMO_VENV := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed

.PHONY: install test unit demo lint bench servers matrix

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test,lint]'
	touch $@

# Two pytest workers: most tests wait on real servers and workers, so two run side by side on two
# cores. The RabbitMQ tests share the machine's broker; each names its worker after its own queue.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2

# The CI matrix of docs/support.md beyond `make test` (.ci/matrix.sh): `make matrix` runs every cell,
# `make matrix-CELL` one (redis86 valkey8 valkey9 py310-oldest py313-newest prefork solo threads gevent).
# `make servers` builds or fetches Redis 8.6, Valkey 8 and Valkey 9 under CRS_SERVERS_DIR (/opt/crs-servers).
servers:
	bash .ci/servers.sh all

matrix: $(STAMP)
	bash .ci/matrix.sh

matrix-%: $(STAMP)
	bash .ci/matrix.sh $*

# The unit tier alone: in-process objects against one redis-server, no worker subprocesses (< 15 s).
unit: $(STAMP)
	$(VENV)/bin/python -m pytest tests/unit

$(DEMO_STAMP): pyproject.toml example_project/requirements.txt
	test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q -e . -r example_project/requirements.txt
	touch $@

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/python example_project/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check celery_redis_stream tests example_project
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py

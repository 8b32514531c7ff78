# make demo / make test / make bench: each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test test-random lint typecheck unit bench setup clean dashboards alerting-tools rules \
	dist browser-tools

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/nexus-otel demo $(ARGS)


lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict -p nexus_otel

# Test files run in TEST_WORKERS processes (pytest-xdist; each file in one process, so a file's
# servers and database are set up once); TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2

unit: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The suite in shuffled order (modules, then the tests inside each), so that a test that passes only
# after another shows. `make test` keeps the order within each file: the same run each time. The seed is printed
# first; `make test-random SEED=<seed>` replays that order.
test-random: $(STAMP)
	@seed="$(SEED)"; seed="$${seed:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"; \
	echo "test order seed $$seed (replay: make test-random SEED=$$seed)"; \
	$(BIN)/pytest -q -p randomly --randomly-seed="$$seed" $(ARGS)

# The real Prometheus and Alertmanager the alerting tests run (Debian packages, installed as root
# when missing; elsewhere those tests skip, and fail under CI=true).
alerting-tools:
	@if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
	    || ! command -v amtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq prometheus prometheus-alertmanager; \
	  else echo "prometheus/prometheus-alertmanager missing and not root: install them"; fi; \
	fi

# The real Chromium the dashboard's browser tests and its benchmark drive (Debian packages,
# installed as root when missing; elsewhere those tests skip, and fail under CI=true).
browser-tools:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium/chromium-driver missing and not root: install them"; fi; \
	fi

# Prometheus config and rules (with their unit tests) and the shipped Alertmanager config
# (skipped without the tools, except under CI=true).
rules: alerting-tools
	@if command -v promtool >/dev/null || [ "$$CI" = true ]; then \
	  set -e; promtool check config --syntax-only prometheus/prometheus.yml; \
  promtool check rules prometheus/rules/*.yml; \
	  promtool test rules prometheus/tests/*.yml; \
	  amtool check-config alertmanager/alertmanager.yml; \
	else echo "skipping promtool/amtool checks: not installed"; fi

test: lint typecheck rules browser-tools unit

dashboards: $(STAMP)
	$(BIN)/nexus-otel dashboards --out grafana/dashboards

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

# make bench ARGS="--quick"  (or --only ingest memory, --soak-seconds 60, ...)
bench: $(VENV)/.bench-installed browser-tools
	$(BIN)/python -m bench $(ARGS)

# The sdist, and the wheel built from it, in dist/ (install with
# pip install 'dist/nexus_otel-<version>-py3-none-any.whl[server]').
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache

# The two commands: `make demo` (embedded end-to-end demo, no services) and `make test` (installs and
# starts PostgreSQL and Azurite for the tests itself). Everything else here serves those two.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test install pgclient services postgres azurite chromium rclone pgcopydb lint bench drill clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# PostgreSQL client binaries (pg_dump, psql): PostgreSQL -> PostgreSQL schema is pg_dump's, replayed by psql.
pgclient:
	@if command -v pg_dump >/dev/null 2>&1 && command -v psql >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null; \
	else echo "PostgreSQL client binaries missing: run 'sudo apt-get install postgresql-client'" >&2; exit 1; fi

demo: install
	$(VENV)/bin/migrate demo --workdir demo-work

# PostgreSQL server binaries (initdb, pg_ctl) from Debian when the machine has none; the test fixture
# starts a throwaway cluster as the `postgres` user on a free loopback port.
postgres:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL server binaries missing: run 'sudo apt-get install postgresql'" >&2; exit 1; fi

# Azurite (npm) for the blob tests; the fixture starts it with --disableTelemetry on a free port.
azurite: node_modules/.bin/azurite-blob

node_modules/.bin/azurite-blob: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# headless Chromium (Debian package) renders the board's HTML report in a test; without it that test is skipped.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium missing: the HTML report's rendering test will be skipped ('sudo apt-get install chromium')" >&2; fi

services: postgres pgclient azurite chromium

test: install services
	$(VENV)/bin/pytest -q

# long acceptance drills (the scale-out partition drill), not part of `make test`
drill: install services
	$(VENV)/bin/pytest -q -s -m drill

lint: install
	$(VENV)/bin/ruff check migrate tests bench
	$(VENV)/bin/mypy migrate

# rclone is the peer of the blob benchmark (Debian package).
rclone:
	@command -v rclone >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null; }

# pgcopydb is the peer of the database load benchmark (Debian package).
pgcopydb:
	@command -v pgcopydb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgcopydb >/dev/null; }

bench: install services rclone pgcopydb
	$(PY) bench/bench_blobs.py
	$(PY) bench/bench_db_load.py
	$(PY) bench/bench_db_verify.py
	$(PY) bench/bench_report.py
	$(PY) bench/bench_sync.py
	$(PY) bench/bench_throttle.py
	$(PY) bench/bench_workers.py
	$(PY) bench/bench_worker_blobs.py
	$(PY) bench/bench_status.py

clean:
	rm -rf demo-work .pytest_cache .ruff_cache .mypy_cache

# One command to run the engine, one to run the tests (see README.md).
#   make run   - set up and start every process on the embedded defaults (SQLite, filesystem broker)
#   make test  - set up and run the whole test suite on PostgreSQL and Redis
#   make test-quick - the unit tier alone (no database, broker or peers), in under a minute
#   make drills - the long crash and outage drill; its table goes to bench/RESULTS.md
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# Tests run on real PostgreSQL and Redis (started or installed by scripts/ensure-services.sh).
TEST_DATABASE_URL ?= postgres://postgres:postgres@127.0.0.1:5432/pacs
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
# Not the embedded default: the engine needs a SECRET_KEY (pacs.E008); this one is for tests only.
TEST_SECRET_KEY ?= test-run-only-not-a-production-key-6f1d0c9b2a7e4f3d8c5b

.PHONY: run test test-quick venv venv-dev viewer services migrate admin lint bench drills clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: installing python3-venv"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: $(BIN)/python requirements.txt
	@[ -e /usr/include/ldap.h ] && [ -e /usr/include/sasl/sasl.h ] || { echo "installing what python-ldap builds with"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc python3-dev libldap2-dev libsasl2-dev; }
	$(BIN)/pip install -q -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.run-installed
venv-dev: $(VENV)/.dev-installed

# The built-in image viewer (worklist.ohif: the pinned @ohif/app from the npm registry, its
# integrity checked) in VIEWER_DIR (var/viewer); nothing to do once that version is there.
# Without npm, make run goes on without it (the study page then offers no viewer).
viewer: venv
	$(BIN)/python manage.py install_viewer --if-npm

migrate: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v 0
	$(BIN)/python manage.py install_viewer --if-npm

run: migrate
	$(BIN)/python manage.py check
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start -f Procfile

admin: migrate
	$(BIN)/python manage.py createsuperuser

services:
	bash scripts/ensure-services.sh

lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: venv-dev services
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) SECRET_KEY=$(TEST_SECRET_KEY) $(BIN)/python manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) SECRET_KEY=$(TEST_SECRET_KEY) $(BIN)/python manage.py install_viewer
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) SECRET_KEY=$(TEST_SECRET_KEY) $(BIN)/pytest $(PYTEST_ARGS)

# The unit tier (pytest -m unit: no database, no broker, no sockets; tests/conftest.py gives
# every test its tier).  Needs neither PostgreSQL nor Redis running.
test-quick: venv-dev
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) SECRET_KEY=$(TEST_SECRET_KEY) $(BIN)/pytest -m unit -q $(PYTEST_ARGS)

# Every benchmark, each on a PostgreSQL database of its own (they fill and empty it), peers
# (dcmtk, Orthanc, python-hl7) started by the scripts.  Results: bench/RESULTS.md.
BENCH_PG := postgres://postgres:postgres@127.0.0.1:5432
# Flushed by bench/archive_latency.py (its worker's broker): not the tests' database.
BENCH_BROKER_URL ?= redis://127.0.0.1:6379/13
bench: venv-dev services
	for db in pacs_bench_hl7 pacs_bench_mwl pacs_bench_store pacs_bench_reading pacs_bench_oru pacs_bench_archive \
	    pacs_bench_wado pacs_bench_priors; do \
	  PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$$db'" | grep -q 1 \
	  || PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $$db"; done
	DATABASE_URL=$(BENCH_PG)/pacs_bench_hl7 $(BIN)/python bench/hl7_intake.py --n 5000 --workers 1,2
	DATABASE_URL=$(BENCH_PG)/pacs_bench_mwl $(BIN)/python bench/mwl.py --sizes 1000,10000,100000
	DATABASE_URL=$(BENCH_PG)/pacs_bench_store $(BIN)/python bench/store.py --images 200 --runs 3 --route
	DATABASE_URL=$(BENCH_PG)/pacs_bench_reading $(BIN)/python bench/reading_worklist.py --studies 100000 --users 10
	BENCH_DATABASE_URL=$(BENCH_PG)/pacs_bench_oru $(BIN)/python bench/oru_delivery.py --n 1000 --concurrency 2,4
	DATABASE_URL=$(BENCH_PG)/pacs_bench_archive CELERY_BROKER_URL=$(BENCH_BROKER_URL) \
	  $(BIN)/python bench/archive_latency.py --images 200 --runs 7
	DATABASE_URL=$(BENCH_PG)/pacs_bench_wado $(BIN)/python bench/wado.py --images 200 --runs 5 --renders 50
	DATABASE_URL=$(BENCH_PG)/pacs_bench_priors CELERY_BROKER_URL=$(BENCH_BROKER_URL) \
	  $(BIN)/python bench/priors_ready.py --rate 100 --orders 17 --exam-minutes 5

# The long crash and outage drill (tests/drills/run.py): every process of the Procfile on a
# PostgreSQL cluster and a Redis server of the drill's own (started from the installed binaries,
# so restarting them disturbs no one), real clients and peers, kill -9 of each process kind and
# outages at moments drawn from the seed; the figures are appended to bench/RESULTS.md.  Options
# in DRILL_ARGS (or DRILL_* variables), e.g.
#   make drills DRILL_ARGS="--seed 7 --kills mllp=100,dicom=30,worker=20 --outage-seconds 20"
# The short drill runs in make test (tests/drills/test_short_drill.py).
drills: venv-dev services
	$(BIN)/python -m tests.drills.run $(DRILL_ARGS)

clean:
	rm -rf $(VENV) var

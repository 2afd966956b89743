# IoTFleet. `make run` starts the demo fleet on this machine, `make test` runs the test suite.
# Both need PostgreSQL, Redis and Mosquitto on their default ports (`make services` says which
# one is missing and how to start it). Settings come from the environment: see README.md.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MANAGE := $(PY) manage.py
# Rebuilt (pip install) only when a requirements file is newer than it.
STAMP := $(VENV)/.installed

PORT ?= 8000
DEVICES ?= 300
DEMO_LOGIN := demo / $(or $(DEMO_PASSWORD),iotfleet-demo)

.DEFAULT_GOAL := help

.PHONY: help
help:
	@echo "make run       check services, migrate, seed the demo fleet, start web, worker, beat,"
	@echo "               MQTT ingest and a simulator that brings the demo devices to life"
	@echo "make test      run the test suite (pytest, real PostgreSQL/Redis/Mosquitto)"
	@echo "make services  check PostgreSQL, Redis and MQTT are reachable (creates the database)"
	@echo "make migrate   apply database migrations"
	@echo "make seed      create the demo tenants, devices and login (DEVICES=$(DEVICES))"
	@echo "make lint      ruff check + ruff format --check"
	@echo "make check     manage.py check + makemigrations --check"

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
		echo "Could not create the virtualenv $(VENV) with $(PYTHON)." \
		     "On Debian/Ubuntu: sudo apt-get install python3-venv"; exit 1; }
	$(PIP) install --quiet --disable-pip-version-check --upgrade pip
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

.PHONY: run
run: $(STAMP)
	$(MANAGE) check_services
	$(MANAGE) migrate --noinput
	$(MANAGE) seed_demo --devices $(DEVICES)
	@echo ""
	@echo "IoTFleet is starting (web, worker, beat, MQTT ingest and the device simulator;"
	@echo "Ctrl-C stops them all):"
	@echo "  Dashboards         http://127.0.0.1:$(PORT)/"
	@echo "  Admin              http://127.0.0.1:$(PORT)/admin/"
	@echo "  API docs           http://127.0.0.1:$(PORT)/api/v1/docs/"
	@echo "  Demo login         $(DEMO_LOGIN)   (admin of Acme Cold Chain)"
	@echo ""
	PATH="$(abspath $(VENV))/bin:$$PATH" exec $(VENV)/bin/honcho start -f Procfile -p $(PORT)

.PHONY: services
services: $(STAMP)
	$(MANAGE) check_services

.PHONY: migrate
migrate: $(STAMP)
	$(MANAGE) migrate --noinput

.PHONY: seed
seed: $(STAMP)
	$(MANAGE) seed_demo --devices $(DEVICES)

.PHONY: test
test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: check
check: $(STAMP)
	$(MANAGE) check
	$(MANAGE) makemigrations --check --dry-run

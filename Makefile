# iotcloud: `make run` to try it, `make test` to check it. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
SIMULATE ?= 1

.PHONY: run test install lint format migrate demo serve bench-http clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py demo --base-url http://127.0.0.1:$(PORT)

## run: set up, migrate, load demo data; web on :8000 + MQTT bridge + embedded broker (+ simulator)
run: demo
	$(PY) manage.py run_platform --addr $(HOST):$(PORT) $(if $(SIMULATE),--simulate)

## test: the whole suite (SQLite by default; DATABASE_URL=postgres://... for PostgreSQL)
test: install
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-http: install
	$(PY) bench/http_device_api/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis

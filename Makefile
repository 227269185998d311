# iotcloud: `make run` to try it, `make test` to check it. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
SIMULATE ?= 1

.PHONY: run test install lint format migrate demo serve bench bench-smoke bench-http clean

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

## test: the whole suite (SQLite by default; DATABASE_URL=postgres://... for PostgreSQL), then bench-smoke
test: install
	$(PY) -m pytest -q -p no:cacheprovider
	$(PY) bench/all.py --smoke

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) bench/readme_tables.py --check

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## bench: every benchmark at full size, one after the other (about 20 minutes; see bench/README.md)
bench: install
	$(PY) bench/all.py

## bench-smoke: every benchmark at a tiny size (under a minute); results in bench/results/smoke/
bench-smoke: install
	$(PY) bench/all.py --smoke

bench-http: install
	$(PY) bench/http_device_api/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis

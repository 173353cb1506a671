# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint bench run clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,flask,sessions,gunicorn,msgpack,hiredis,embedded,prometheus]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check tiered_cache tests bench example_app gunicorn.conf.py
	$(BIN)/ruff format --check tiered_cache tests bench example_app gunicorn.conf.py
	$(BIN)/mypy --strict tiered_cache example_app bench

# The example app under gunicorn, 4 workers, on http://127.0.0.1:8000/ (PORT=... to move it).
run: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

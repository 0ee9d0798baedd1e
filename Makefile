# The two commands in the README: `make demo` (the whole pipeline on its embedded default)
# and `make test`. Both create or reuse .venv and install what they need. `make lint`
# (ruff: lint and format check; CI runs it after `make test`) uses the same .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench mutation clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dferclip demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# Mutation testing (docs/testing.md): slow, not part of `test` or CI. MODULES= picks some of
# mutation/modules.toml; the per-module score table is also written to build/mutation/report.md.
MODULES ?=
mutation: $(STAMP)
	$(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) tools/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) runs .pytest_cache

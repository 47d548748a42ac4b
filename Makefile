# The two commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= config.toml

.PHONY: install serve test test-pg bench clean translations

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

serve: install
	$(BIN)/listserver --config $(CONFIG) init
	$(BIN)/listserver --config $(CONFIG) serve

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The same suite on PostgreSQL (a server on 127.0.0.1:5432, trust auth, database test).
test-pg: install
	LISTSERVER_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \
		$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info var

# Extract the archive's strings from the templates and merge them into each language's
# catalogue (listserver/locale/LANG/LC_MESSAGES/messages.po); translate the new entries.
# Catalogues are compiled in memory when used: there is no .mo to build or commit.
translations: install
	mkdir -p build
	$(BIN)/pybabel extract -F babel.cfg --no-location --omit-header -o build/messages.pot .
	$(BIN)/pybabel update -i build/messages.pot -d listserver/locale --no-fuzzy-matching --omit-header

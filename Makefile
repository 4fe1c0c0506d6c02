# Position Distributor: make run, make test. Everything runs from a .venv in this repository.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

NAME ?= strategy_1
PORT ?= 12345
PEERS ?=
DATA_DIR ?= data
ARGS ?=

.PHONY: install run test check bench docs proto lint format clean screenshot

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m position_distributor $(NAME) $(PORT) $(PEERS) --data-dir $(DATA_DIR) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The longer hypothesis profile, lint and branch coverage of the pure modules.
check: lint $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m coverage run -m pytest -q
	$(BIN)/python -m coverage report --include='position_distributor/wire.py,position_distributor/book.py,position_distributor/clock.py,position_distributor/protocol.py,position_distributor/console.py'

bench: $(STAMP)
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.riskview

# The generated parts of docs/cli.md (the --help texts); tests/test_docs.py fails when stale.
docs: $(STAMP)
	$(BIN)/python tools/cli_doc.py

# docs/risk-view.png: the page as the browser test sees it (a breach, a stale strategy).
screenshot: $(STAMP)
	PD_SCREENSHOT=docs/risk-view.png $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_riskview_browser.py -k breach

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=position_distributor \
		--pyi_out=position_distributor protos/position.proto

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE_RAW := mod_dataset/sample
DEMO_DIR ?= demo_output

.PHONY: install test demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c .ci/constraints.txt -e ".[test]"
	touch $@

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(DEMO_DIR) build *.egg-info

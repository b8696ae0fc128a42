# Two entry points, each creating the environment first (once; re-run when pyproject.toml changes).
#   make train [ARGS="casm.thinning=F trainer.max_epochs=3"]   set up + train the default config
#   make test  [PYTEST_ARGS="-m slow"]                          set up + run the tests
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: train test setup benchmark

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/python train.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(VENV)/bin/python benchmarks/train_step.py

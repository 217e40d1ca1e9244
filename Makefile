# Two commands for a fresh clone:  make run   |   make test
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PORT ?= 3000
# The BentoML model store lives inside the project unless you say otherwise.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
# The data source: the public archive by default; a local copy when ../shared has one (CI does).
SHARED_ZIP := $(abspath $(CURDIR)/../shared/data/magnetic-tiles.zip)
ifeq ($(origin MT_DATA_SOURCE), undefined)
  ifneq ($(wildcard $(SHARED_ZIP)),)
    export MT_DATA_SOURCE := $(SHARED_ZIP)
  endif
endif

.PHONY: help venv run pipeline serve test test-fast params exp-show dag bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision pinned first so no dependency can pull another build
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed  ## create the virtualenv and install the pinned stack

pipeline: venv  ## run the DVC pipeline as a new experiment (data → split → train → evaluate → export → package)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc exp run

run: pipeline serve  ## the full pipeline, then serve the newest model on :$(PORT)

serve: venv  ## serve the latest model from the BentoML store on :$(PORT)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/bentoml serve service:MagneticTileService --host 0.0.0.0 --port $(PORT)

# Tests run many small CPU jobs side by side: one thread each is ~10x faster than two fighting on 2 cores.
test: venv  ## the whole test suite (unit + integration + slow)
	PATH=$(CURDIR)/$(BIN):$$PATH OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: venv  ## unit tests only
	PATH=$(CURDIR)/$(BIN):$$PATH OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

params: venv  ## compose params.yaml from conf/ (what dvc exp run does first)
	$(BIN)/python -c "from dvc.utils.hydra import compose_and_dump as c; c('params.yaml', '$(CURDIR)/conf', None, 'config', '$(CURDIR)/.dvc', [])"

# DVC anchors --keep patterns at the start of the column name
EXP_COLUMNS := ^(Experiment|Created|model\.(arch|encoder|lr)|trainer\.max_epochs|test\.(dice|iou)|test\.per_class_dice\..+|test\.detection\.(recall|false_alarm_rate|auroc))$$

exp-show: venv  ## compare experiments: key params and metrics
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc exp show --no-pager --md --drop '.*' --keep '$(EXP_COLUMNS)' \
	  --sort-by reports/metrics.json:test.dice --sort-order desc

dag: venv  ## print the pipeline graph
	$(BIN)/dvc dag

bench: venv  ## run the benchmarks (see docs/PERFORMANCE.md)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/bench_model.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/bench_http.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/bench_train.py

clean:  ## remove caches and run outputs (not the venv, not the DVC cache)
	rm -rf checkpoints outputs multirun lightning_logs .pytest_cache

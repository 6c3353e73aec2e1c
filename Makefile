# Two entry points: `make run` (set up, then the whole workflow on the default config) and
# `make test` (set up, then the test suite). Both create the virtual environment on first use.
VENV ?= .venv
CORES ?= 2
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

.PHONY: setup run test dry-run report clean

setup: $(STAMP)

$(STAMP): envs/requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r envs/requirements.txt
	touch $(STAMP)

run: $(STAMP)
	snakemake --cores $(CORES)

dry-run: $(STAMP)
	snakemake --cores $(CORES) -n

report: $(STAMP)
	snakemake --report results/report.html

test: $(STAMP)
	python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf results/dataset results/cam results/refine results/pseudo_labels results/seg results/eval \
	       results/summary results/logs results/benchmarks results/devices.json .snakemake

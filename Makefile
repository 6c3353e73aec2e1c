# Two entry points: `make run` (set up, then the whole workflow on the default config) and
# `make test` (set up, then the test suite). Both create the virtual environment on first use.
VENV ?= .venv
CORES ?= 2
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

.PHONY: setup run test dry-run report clean browser

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

test: $(STAMP) browser
	python -m pytest $(PYTEST_ARGS)

# Debian's Chromium and its driver, for the results browser's test (tests/test_browse.py); installed
# with apt-get as root, the way CI runs; elsewhere the test says how and skips.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "make browser: could not install chromium and chromium-driver (root needed); tests/test_browse.py will skip"

clean:
	rm -rf results/dataset results/cam results/refine results/pseudo_labels results/seg results/eval results/browse \
	       results/summary results/scribbles results/logs results/benchmarks results/devices.json .snakemake

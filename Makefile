# segdistill: `make demo` sets everything up and runs the main job; `make test` sets up and tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= demo

.PHONY: setup demo test test-fast smoke report bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup                       ## the main job: the beta ablation (paper Fig. 6) on local Ray
	$(PY) experiments/ablation_beta.py --preset $(PRESET)
	$(PY) -m analysis --results results --out reports

test: setup                       ## the whole suite (unit, trainer, real Ray, experiment smoke presets)
	$(PY) -m pytest -q

test-fast: setup                  ## everything but the Ray and smoke integration tests
	$(PY) -m pytest -q -m "not ray and not slow"

RESULTS ?= results
REPORTS ?= reports
report: setup                     ## every table/figure of the paper (and more) from $(RESULTS)/ into $(REPORTS)/
	$(PY) -m analysis --results $(RESULTS) --out $(REPORTS)

bench: setup                      ## GPU benchmark (run on a GPU machine)
	$(PY) benchmarks/step.py --device cuda

clean:
	rm -rf $(VENV) .pytest_cache

# Quick start: `make demo` (set up + main job on embedded data), `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dgmkd-installed

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# the pinned CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# the quick form on 28x28 MNIST: batch 32 and one student size keep it to a few minutes on a CPU
demo: setup
	$(VENV)/bin/dgmkd run hvae-compress --quick --set dataset=mnist --set batch=32 --set ratios=15

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow --durations=0

bench: setup
	$(PY) benchmarks/core_overhead.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info

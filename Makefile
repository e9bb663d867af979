# Two commands from a fresh clone:  make demo  (install + run the quickstart)  and  make test.
# make test leaves out the tests marked slow (under 8 minutes on two quiet cores); make test-slow runs those.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The constraints pin torch to the CPU build (a plain `torch` would pull several GB of CUDA packages).
PIP     = $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install demo test test-slow test-fast bench clean

$(BIN)/mcomp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,bench]"
	@touch $@

install: $(BIN)/mcomp

demo: install
	@mkdir -p build
	$(BIN)/mcomp run configs/quickstart.yaml -o build/digits.opt.onnx --report-md build/digits.opt.report.md

test: install  # everything but the slowest tests
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install  # the slowest tests (CI runs them after make test)
	$(BIN)/python -m pytest -q -m slow

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not realmodel"

bench: install  # each writes benchmarks/results/<name>.json and .md
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/prune.py
	$(BIN)/python benchmarks/quantize.py
	$(BIN)/python benchmarks/distill.py

clean:
	rm -rf build benchmarks/results .pytest_cache

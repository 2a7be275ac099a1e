# The two commands a newcomer needs:   make report   (build report/report.pdf)   and   make test   (run the tests).
# Both create the Python environment (.venv) first when it is missing or out of date.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

MNIST  := $(or $(AELIB_DATA),data)/mnist.npz

.PHONY: env data test lab clean

env: $(STAMP)

data: $(MNIST)

$(MNIST): | $(STAMP)
	$(PY) -m aelib fetch-mnist

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $@

test: $(STAMP) $(MNIST)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) build .pytest_cache

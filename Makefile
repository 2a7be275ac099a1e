# The two commands a newcomer needs:   make report   (build report/report.pdf)   and   make test   (run the tests).
# Both create the Python environment (.venv) first when it is missing or out of date.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

MNIST  := $(or $(AELIB_DATA),data)/mnist.npz
STUDY  := $(or $(AELIB_CACHE),build/cache)/study.json

TEX_PACKAGES := texlive-xetex texlive-fonts-recommended texlive-plain-generic pandoc fonts-dejavu-core poppler-utils
DEJAVU := /usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf

.PHONY: env data tex report test bench hf lab clean

env: $(STAMP)

data: $(MNIST)

$(MNIST): | $(STAMP)
	$(PY) -m aelib fetch-mnist

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $@

# xelatex, pandoc, pdftotext and the DejaVu fonts: installed with apt-get when missing (as root on Debian/Ubuntu)
tex:
	@if command -v xelatex >/dev/null && command -v pandoc >/dev/null && command -v pdftotext >/dev/null \
	    && test -f $(DEJAVU); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the LaTeX tool chain: $(TEX_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES) >/dev/null; \
	else \
	  echo "error: the report needs xelatex, pandoc, pdftotext and DejaVu fonts; on Debian/Ubuntu run" >&2; \
	  echo "  sudo apt-get install --no-install-recommends $(TEX_PACKAGES)" >&2; exit 1; \
	fi

report: $(STAMP) $(MNIST) tex
	$(PY) report/build.py

test: $(STAMP) $(MNIST) tex
	$(PY) -m pytest

# The full Hessian-free comparison of chapter 6 (about half an hour): it writes report/hf_results.json, which is
# committed and which the report reads. It uses the learning rates tuned in chapter 5 (run first when missing),
# and rebuilds the report afterwards (training runs come from the cache).
hf: $(STAMP) $(MNIST) tex
	test -f $(STUDY) || $(PY) report/build.py --only 05
	$(PY) report/hf_compare.py
	$(PY) report/build.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) build .pytest_cache

# The speed benchmark against PyTorch (a benchmark-only dependency). OpenBLAS's core type is left to its own
# detection for this command only (the machine's OPENBLAS_CORETYPE pins an older kernel); see benchmarks/bench.py.
bench: $(STAMP) $(MNIST)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0 threadpoolctl
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench.py

# One source of truth for setup, tests, the book and Jupyter Lab. The README, .ci/run and the GitHub
# workflows call these targets.
#   make book   set up .venv and build the executed book to _build/html (Jupyter Book 1.x, fails on any error)
#   make test   set up .venv and run the tests (chapters executed through papermill with QUICK=True)
#   make lab    set up .venv and open the chapters in Jupyter Lab (MyST .md files open as notebooks via jupytext)
# glibc returns every allocation over 32 MB to the system when it is freed, so each large tensor (a 5,000 x 983
# float64 score matrix is 39 MB) is paid again in page faults: measured 3x slower ranking gradients (0.32 s ->
# 0.10 s, minor faults 995k -> 100k). Keeping freed memory in the heap is the fix; kernels and tests inherit it.
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 4294967296
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHAPTERS := $(wildcard book/0*.md)
NOTEBOOKS := $(patsubst book/%.md,book/_notebooks/%.ipynb,$(CHAPTERS))

.PHONY: setup test test-slow book notebooks lab benchmarks lint clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "vif-book needs Python >= 3.11; run make PYTHON=python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (vif)" >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal  # two workers: the chapters run side by side on 2 cores

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

book/_notebooks/%.ipynb: book/%.md $(STAMP)
	@mkdir -p book/_notebooks
	$(BIN)/jupytext --quiet --to ipynb --output $@ $<

notebooks: $(NOTEBOOKS)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

lab: $(STAMP) notebooks
	$(BIN)/jupyter lab book/

benchmarks: $(STAMP)
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf _build book/_notebooks book/results

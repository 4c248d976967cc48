# The README's two commands are `make book` and `make test`; each installs what it needs
# into a local virtual environment (.venv) first. `make execute` re-runs the notebooks in
# place and refreshes their stored outputs; `make bench` runs the benchmark scripts.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NOTEBOOKS ?= $(wildcard notebooks/*.ipynb)

.PHONY: install book test execute bench mathjax clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,test,peers]"
	touch $(STAMP)

install: $(STAMP)

mathjax: install
	$(PY) tools/install_mathjax.py

book: install mathjax
	rm -rf _build/.doctrees
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html: open _build/html/index.html in a browser."

test: install mathjax
	$(PY) -m pytest tests notebooks --nbval --nbval-current-env -p no:cacheprovider --durations=30

execute: install
	$(PY) tools/execute_notebooks.py $(NOTEBOOKS)
	$(PY) tools/ledger.py

bench: install
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf _build .jupyter_cache book/_static/mathjax

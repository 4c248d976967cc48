# The README's two commands are `make book` and `make test`; each installs what it needs
# into a local virtual environment (.venv) first. `make execute` re-runs the notebooks in
# place and refreshes their stored outputs; `make bench` runs the benchmark scripts.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NOTEBOOKS ?= $(wildcard notebooks/*.ipynb)
# pytest-xdist workers for `make test`: each notebook runs whole on one worker (one thread per kernel).
TEST_WORKERS ?= 2

# The floating-point path, pinned for `make test` and `make execute` so that stored outputs reproduce on
# any x86-64 CPU (AVX2 or AVX-512, any core count). Each switch changes printed digits on an AVX-512 machine
# (tools/fp_probe.py shows which operation each one moves):
#   ATEN_CPU_CAPABILITY=avx2   PyTorch's own vectorized kernels (softmax, log_softmax, SDPA, ...)
#   ONEDNN_MAX_CPU_ISA=AVX2    oneDNN, which PyTorch calls for some float32 ops (GELU, ...)
#   MKL_CBWR=AVX2              MKL's BLAS inside PyTorch (float64 matmul, ...)
#   OPENBLAS_CORETYPE=Haswell  numpy's and scipy's OpenBLAS (matmul, SVD, solve)
#   OMP/MKL/OPENBLAS_NUM_THREADS=1  parallel reductions split by thread count
# `make check-portable` re-runs every notebook with none of these and vectorization off, to show that
# no verdict depends on the floating-point path.
ifeq ($(shell uname -m),x86_64)
FP_PINS := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 OPENBLAS_CORETYPE=Haswell
endif
FP_PINS += OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 KEXUE_FP_PINNED=1
UNPINNED := env -u ATEN_CPU_CAPABILITY -u ONEDNN_MAX_CPU_ISA -u MKL_CBWR -u OPENBLAS_CORETYPE \
	-u OMP_NUM_THREADS -u MKL_NUM_THREADS -u OPENBLAS_NUM_THREADS -u KEXUE_FP_PINNED

.PHONY: install book test execute check-portable bench mathjax clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,test,peers]"
	# bytepiece (the tokenizer chapter's peer) builds against pyahocorasick in bytes mode, which needs
	# these three steps; it cannot be a plain requirement.
	$(PY) -m pip install --quiet -c constraints.txt Cython
	AHOCORASICK_BYTES=1 $(PY) -m pip install --quiet -c constraints.txt --no-binary pyahocorasick pyahocorasick
	$(PY) -m pip install --quiet -c constraints.txt --no-build-isolation bytepiece
	touch $(STAMP)

install: $(STAMP)

mathjax: install
	$(PY) tools/install_mathjax.py

book: install mathjax
	rm -rf _build/.doctrees
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html: open _build/html/index.html in a browser."

test: install mathjax
	env $(FP_PINS) $(PY) -m pytest tests notebooks --nbval --nbval-current-env -p no:cacheprovider --durations=30 \
		-n $(TEST_WORKERS) --dist loadfile

execute: install
	env $(FP_PINS) $(PY) tools/execute_notebooks.py $(NOTEBOOKS)
	$(PY) tools/ledger.py

# Every check of every notebook must pass with vectorization off and no pins (printed digits may differ);
# the notebooks are executed in a scratch copy, nothing is written back. Not part of `make test`.
check-portable: install
	$(UNPINNED) ATEN_CPU_CAPABILITY=default $(PY) tools/execute_notebooks.py --check -j 2 $(NOTEBOOKS)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf _build .jupyter_cache book/_static/mathjax

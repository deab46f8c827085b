# make demo  - set up .venv (pinned) and run the main job on the embedded tiny model
# make test  - set up .venv if needed, then the whole test suite (unit tests + notebooks)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2 --dist loadfile
NBMAKE_ARGS ?= --nbmake --nbmake-timeout=300
# one OpenMP thread per test worker: two workers on two cores without oversubscription
# tests and notebooks: the static kernel choice (no once-per-machine measurement) and one shared
# build of the native kernels (tests/conftest.py uses the same folder)
TEST_ENV := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	FIDDLER_NB_KERNEL_CHOICE=$${FIDDLER_NB_KERNEL_CHOICE:-default} \
	FIDDLER_NB_KERNELS_CACHE=$${FIDDLER_NB_KERNELS_CACHE:-/tmp/fiddler_nb-kernels-$$(id -u)}

.PHONY: setup demo test test-unit clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fiddler-nb demo

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) $(NBMAKE_ARGS) tests notebooks

test-unit: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests -m "not browser"

clean:
	rm -rf $(VENV) reports .pytest_cache

# The few targets people type. `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: install demo test test-fast unit-test nb-test gpu-check lab lint format bench student site site-test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev,classroom]"
	touch $(STAMP)

# The main job: execute the notebook series in order on the embedded toy-cars dataset, storing outputs
# in place and refreshing assets/.
demo: $(STAMP)
	$(BIN)/python -m ddpm_lib.toy_cars --out assets/toy_cars_preview_32.png
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
		start=$$(date +%s); echo "== $$nb"; \
		../$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; \
		echo "== $$nb: $$(( $$(date +%s) - start )) s"; \
	done

# Every test in one pytest run spread over both cores (pytest-xdist; a notebook's cells stay in one
# worker, one thread each): the unit tests, and the notebooks as nbval regression tests in fast mode
# (DDPM_FAST=1: smaller data, a few training steps). Ends with the time of each part and the CPU kind.
WORKERS ?= 2
FAST_ENV := DDPM_FAST=1 TQDM_DISABLE=1 OMP_NUM_THREADS=1
NBVAL := --nbval-current-env --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg \
	--nbval-cell-timeout=900 -W "ignore:Overlapping options"

# pytest without the seconds that jsonschema's IRI grammar costs every process at start (tools/no_iri_parser.py)
PYTEST := $(BIN)/python -m pytest -p tools.no_iri_parser

test: $(STAMP)
	$(FAST_ENV) $(PYTEST) -p tools.suite_times -p no:cacheprovider -n $(WORKERS) \
		--dist loadscope $(NBVAL) --suite-times-json build/test_times.json tests $(NOTEBOOKS)

# The quick tier while editing (well under a minute): math, shapes, the analytic-oracle checks and the
# command lines' argument checks; everything marked slow (training runs, subprocesses, notebooks) waits
# for `make test`.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PYTEST) -p no:cacheprovider -q -n $(WORKERS) -m "not slow" tests

unit-test: $(STAMP)
	$(FAST_ENV) $(PYTEST) -p tools.suite_times -n $(WORKERS) --dist loadscope tests

nb-test: $(STAMP)
	$(FAST_ENV) $(PYTEST) -p tools.suite_times -p no:cacheprovider -n $(WORKERS) \
		--dist loadscope $(NBVAL) $(NOTEBOOKS)

# On a machine with a CUDA GPU (under 10 minutes): the tests that need CUDA (fp16 + GradScaler, bf16, channels-last,
# torch.compile, a 1-process NCCL torchrun, exact resume on CUDA), then the training and sampling notebooks in fast
# mode on the GPU. Prints the time of each. `make gpu-check GPU_PY=python3` uses that interpreter instead of the venv
# (a GPU machine whose image already has torch).
gpu-check: $(if $(GPU_PY),,$(STAMP))
	$(or $(GPU_PY),$(BIN)/python) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check needs a CUDA GPU')"
	nvidia-smi --query-gpu=name,memory.total --format=csv || true
	$(or $(GPU_PY),$(BIN)/python) -m pytest -v -rs -s --durations=0 tests/test_cuda.py
	cd notebooks && DDPM_FAST=1 TQDM_DISABLE=1 $(if $(GPU_PY),$(GPU_PY),../$(BIN)/python) -m pytest -p no:cacheprovider --nbval-current-env --nbval-lax \
		--nbval-sanitize-with sanitize.cfg -W "ignore:Overlapping options" --durations=0 05_training.ipynb 06_sampling.ipynb

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check ddpm_lib tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format ddpm_lib tests benchmarks && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -c "import diffusers" 2>/dev/null || $(BIN)/python -m pip install -e ".[bench]"
	$(BIN)/python benchmarks/bench.py --profile --json benchmarks/results.json

# Student versions of every notebook in student/ (ignored by git), made by nbgrader's generate_assignment: solutions
# replaced by `raise NotImplementedError()`, outputs cleared, test cells locked; assets beside them. TEACHING.md says
# how to hand them out and grade them.
student: $(STAMP)
	$(BIN)/python tools/make_student.py --out student

# The course as a static website in build/site/ (open build/site/index.html): every notebook with its stored
# outputs (nothing is executed), README, TEACHING and NOTATION; builds and reads offline (tools/build_site.py).
site: $(STAMP)
	$(BIN)/python -c "import myst_nb, sphinx_book_theme, jupyter_server_mathjax" 2>/dev/null || $(BIN)/python -m pip install -e ".[site]"
	$(BIN)/python tools/build_site.py

# Every page of the site in headless Chromium (Debian's: apt-get install chromium): no error, no request to another
# host, math typeset, pictures loaded, links alive, explorer sliders that move. Not part of `make test`.
site-test: site
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install -e ".[site]"
	DDPM_SITE_TEST=1 $(BIN)/python -m pytest -p no:cacheprovider -rs tests/test_site.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs student

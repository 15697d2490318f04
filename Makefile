# fedgrid: `make demo`, `make test`, `make test-fast`, `make bench`. Each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Python may write its bytecode caches: with PYTHONDONTWRITEBYTECODE set (as some images do), every
# driver, site process and pytest worker compiles fedgrid and rewrites the tests' asserts again
export PYTHONDONTWRITEBYTECODE :=

.PHONY: venv demo test test-fast test-slurm lint docs bench bench-full clean

venv: $(STAMP)

# torch first, pinned: 2.13.0 is the CPU wheel on local disk; a bare `torch` pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,endpoint,kubernetes,aws,monitoring,privacy,tracking,llm,flower,bench,docs]'
	touch $(STAMP)

# the documentation (mkdocs.yml, docs/) into site/: the job-file reference regenerated from the schema
# first, then a strict build (a broken link or a missing page fails it; `make test` fails on a stale
# committed reference too); .venv/bin/mkdocs serve to preview it
docs: $(STAMP)
	$(BIN)/python docs/hooks/reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

demo: $(STAMP)
	$(BIN)/fedgrid run examples/quickstart.yaml --fresh

# mypy: the package as `fedgrid` (pyproject.toml [tool.mypy]: fedgrid/, and flow/, executors/, apps/
# through its links)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# the whole suite but the Slurm drills: tests/unit and tests/integration (real executors and CLI runs).
# Three pytest workers on two cores, tests handed out as workers free up (worksteal): most of an
# integration test is waiting (worker pools starting, heartbeats, held rounds), which the others
# fill. The suite is CPU-bound on two cores (site processes starting, training): 199-253 s of pytest
# here in five runs after the leaner site start (2026-12-07; 250-328 s before it), 527 s in one process earlier
test: lint
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slurm" -n 3 --dist worksteal

# fedgrid on a real one-node Slurm cluster (started here: apt install + daemons, needs root) and
# the batch-site drills: a cancelled block, a walltime, a held queue, the driver as a batch job
test-slurm: $(STAMP)
	scripts/slurm-cluster.sh start
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests/slurm

# the unit tests only (pure logic, no executor started): for the edit-test loop
test-fast: lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python bench/all.py $(BENCH_ARGS)

bench-full: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python bench/all.py --full $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info .mypy_cache

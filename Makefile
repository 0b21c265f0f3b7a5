# Two commands do all the set-up: `make up` runs the stack, `make test` the suite.
VENV ?= .venv
PYTHON ?= python3
# CPU wheel here; a GPU host may set TORCH_SPEC to its CUDA build.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpuq-installed

.PHONY: up test worker lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so the project's looser range installs nothing more.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

up: $(STAMP)
	$(VENV)/bin/gpuq up

worker: $(STAMP)
	$(VENV)/bin/gpuq worker

# pytest exits 5 when a selection (say -m gpu on a CPU machine) holds no test.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS); code=$$?; if [ $$code -eq 5 ]; then echo "no tests selected"; exit 0; fi; exit $$code

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .gpuq .pytest_cache

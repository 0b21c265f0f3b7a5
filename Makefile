# Two commands do all the set-up: `make up` runs the stack, `make test` the suite.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpuq-installed

# Which build of torch. PyPI's Linux wheel is the CUDA build and brings several GB of CUDA
# libraries, so it is taken only where nvidia-smi lists a GPU (a line "GPU 0: ..."; it prints
# its failures on stdout too, "NVIDIA-SMI has failed..." or "No devices were found");
# elsewhere the CPU build. TORCH=cuda or TORCH=cpu overrides the guess.
# Recursively expanded and used only in the install recipe: nvidia-smi runs only when torch is
# installed, not at every make, and a wedged driver costs at most 10 s.
TORCH_VERSION ?= 2.13.0
TORCH ?= $(shell timeout 10 nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo cuda || echo cpu)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Any other build: the pip arguments that install it, for example CUDA 12.6's
#   make up TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'
TORCH_SPEC ?=

INSTALL_TORCH_cuda = $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
# The +cpu wheel from wherever pip is already configured to look first (a wheelhouse or a
# mirror that may be all a closed network reaches), else PyTorch's CPU index: it holds no
# CUDA build that pip could pick instead.
INSTALL_TORCH_cpu = $(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	|| $(PY) -m pip install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX)
# $1 is TORCH, expanded once (so nvidia-smi runs once).
install_torch_for = $(if $(filter cpu cuda,$1),$(INSTALL_TORCH_$1),$(error TORCH is "$1": give TORCH=cpu or TORCH=cuda, or TORCH_SPEC with the pip arguments of another build))
INSTALL_TORCH = $(if $(strip $(TORCH_SPEC)),$(PY) -m pip install -q $(TORCH_SPEC),$(call install_torch_for,$(strip $(TORCH))))

.PHONY: up test install worker lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so the project's looser range installs nothing more.
	$(INSTALL_TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Only the virtualenv, for the commands that run from it (.venv/bin/python -m api.keygen, ...).
install: $(STAMP)

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

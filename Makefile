# The two commands of the README: `make demo` (the main job, on the embedded engine) and `make test`.
# Both set up .venv first; an existing .venv is reused and pip runs again only when pyproject.toml changed.
.PHONY: setup demo test bench
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
STAMP := .venv/.plasma-sidecar-installed

setup: $(STAMP)

# torch first: on the build machines the CPU wheel of this version is on local disk (a bare `torch`
# would pull a multi-GB CUDA build); elsewhere PyPI has it.
$(STAMP): pyproject.toml
	@test -x .venv/bin/python || $(PYTHON) -m venv .venv
	@.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	@.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==$(TORCH_VERSION)" \
		|| .venv/bin/python -m pip install -q torch
	@.venv/bin/python -m pip install -q -e ".[engine,test]"
	@touch $(STAMP)

demo: setup
	@.venv/bin/sidecar demo --dir demo

test: setup
	@.venv/bin/python -m pytest -q

bench: setup
	@.venv/bin/python bench/overhead.py
	@.venv/bin/python bench/engine.py
	@.venv/bin/python bench/train.py
	@.venv/bin/python bench/responsiveness.py
	@.venv/bin/python bench/reliability.py

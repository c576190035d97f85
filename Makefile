# The two commands of the README: `make demo` (the main job, on the embedded engine) and `make test`.
.PHONY: setup demo test bench

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

test: setup
	@.venv/bin/python -m pytest -q

bench: setup
	@.venv/bin/python bench/overhead.py
	@.venv/bin/python bench/engine.py
	@.venv/bin/python bench/train.py

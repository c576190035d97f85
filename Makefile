# The two commands of the README: `make demo` (the main job, on the embedded engine) and `make test`;
# `make docs` serves the manual (docs/, mkdocs.yml) at http://127.0.0.1:8000.
# Both set up .venv first; an existing .venv is reused and pip runs again only when pyproject.toml changed.
.PHONY: setup demo test bench browser docs sshd
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
	@.venv/bin/python -m pip install -q -e ".[engine,test,docs]"
	@touch $(STAMP)

demo: setup
	@.venv/bin/sidecar demo --dir demo

# The studio's browser tests drive the system Chromium (Debian's `chromium`): installed here when it is
# missing and we may (root with apt-get, as on CI); otherwise say how, and the tests will name it too.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the studio's browser tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "the studio's browser tests need chromium: sudo apt-get install chromium (or your system's package)"; fi; }

docs: setup
	@NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve

# The remote-training tests run the ssh provider against the system's OpenSSH server (Debian's
# `openssh-server`): they start its `sshd` themselves, on a free 127.0.0.1 port with their own keys and
# config, and never use the system's service. Installed here the same way as Chromium.
sshd:
	@command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing openssh-server for the remote-training tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null; \
	else echo "the remote-training tests need OpenSSH's sshd: sudo apt-get install openssh-server (or your system's package)"; fi; }

# The suite on every core (pytest-xdist): each test file runs whole on one worker (--dist loadfile), so a
# file's module fixtures (a daemon, a browser, a built wheel) are made once. TEST_WORKERS=0 runs it in this
# one process. Failures, and pytest's 5 when no test is collected, are the exit status as without workers.
TEST_WORKERS ?= auto
test: setup browser sshd
	@.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: setup
	@.venv/bin/python bench/overhead.py
	@.venv/bin/python bench/engine.py
	@.venv/bin/python bench/train.py
	@.venv/bin/python bench/responsiveness.py
	@.venv/bin/python bench/reliability.py
	@.venv/bin/python bench/backends.py
	@.venv/bin/python bench/drafts.py
	@.venv/bin/python bench/previews.py
	@.venv/bin/python bench/upscale.py
	@.venv/bin/python bench/likeness.py

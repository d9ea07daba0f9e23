# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PIN := torch==2.13.0
# The book's package: a reference in tests and the peer in benchmarks. It declares
# tensorflow and jupyterlab as requirements but imports neither, hence --no-deps.
BOOK_PKG  := llms-from-scratch==1.0.19

.PHONY: demo test install install-test bench-deps browser clean

# Creates the venv; installs the torch pin first when no torch is present so the
# resolver never pulls a multi-GB CUDA build where a CPU wheel is at hand.
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(BOOK_PKG)
	touch $@

# Debian's Chromium and its matching chromedriver for tests/e2e/test_e2e_page.py (Selenium
# drives /usr/bin/chromium; no browser download), installed when missing. Needs apt-get and
# root or sudo; elsewhere it says so, and the page test skips (or fails under CI=true).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "no apt-get: install chromium and chromium-driver for the web page test"; fi

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test browser

# The main job: pretrain a small GPT on the embedded short story, then sample from it.
demo: $(VENV)/.installed
	$(VENV)/bin/scratchllm pretrain --out runs/verdict --overwrite
	$(VENV)/bin/scratchllm generate --model runs/verdict --max-new-tokens 40 "Every effort moves you"

test: $(VENV)/.installed-test browser
	$(PY) -m pytest -q

# Peers for benchmarks/: the book's package (also a test reference, see install-test) and
# transformers, both already in the test environment.
bench-deps: $(VENV)/.installed-test

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

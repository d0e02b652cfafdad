# Two commands on a fresh machine: `make chat` and `make test`. Each creates .venv and installs.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build;
# override with e.g. `make test TORCH_SPEC="torch==2.14.1"` or TORCH_SPEC="torch" for the default build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install browser test chat default-model bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The chat page's browser test (tests/test_web.py) drives Debian's chromium + chromium-driver:
# installed with apt-get when missing (as root, else through sudo). Elsewhere install them yourself.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "make: no apt-get: install chromium and chromedriver for tests/test_web.py"; fi

test: install browser
	$(BIN)/python -m pytest -q

chat: install
	$(BIN)/python interact.py

# The shipped models/default/, rebuilt from open corpora (8 minutes with one GPU, about 8 hours on
# 2 CPU cores; a stopped run resumes where it stopped: run it again). Delete models/default/ first.
default-model: install
	$(BIN)/python -m chitchat default-model

bench: install
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/chat.py
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Two commands on a fresh machine: `make chat` and `make test`. Each creates .venv and installs.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, as TORCH_SPEC. Its pin chooses the version, not the build: which build pip
# gets depends on the index it reads. On Linux x86_64, PyPI's torch wheel is the CUDA build (several GB
# with its nvidia-* packages); the CPU build comes from PyTorch's CPU wheel index (its address is on the
# install selector of PyTorch's "Get Started" page, Compute Platform: CPU): `make install TORCH_INDEX=ADDRESS`.
# On macOS and Windows, PyPI's wheel is already a CPU build. A pip configured with a folder of wheels
# (pip's find-links) installs a build found there. Another version: `make test TORCH_SPEC="torch==2.14.1"`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: install browser test chat default-model bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
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

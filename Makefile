# Two commands a new user needs: `make play` and `make test`. Each installs what it needs first.
PYTHON ?= python3
# Extra pip arguments for torch. Where pip's default index would serve a CUDA build (stock Linux
# x86_64), `make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"` takes the CPU one.
TORCH_PIP_ARGS ?=
VENV ?= .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.base
PLAY_STAMP := $(VENV)/.installed-play
STAMP := $(VENV)/.installed

.PHONY: install browser play test lint clean

# The venv and torch, shared by both installs (redone when this file changes the pin).
$(BASE): Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch pinned: a range pulls the newest, a multi-GB CUDA build on Linux x86_64. This machine's
	# index serves 2.13.0 as a CPU build; elsewhere TORCH_PIP_ARGS picks the CPU index. Never torchvision.
	$(BIN)/python -m pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	touch $(BASE)

# What `play --model pong-tiny` (and `demo`) needs (the local model and the report's plots): a lighter install.
$(PLAY_STAMP): pyproject.toml $(BASE)
	$(BIN)/python -m pip install -q -e ".[local,report]"
	touch $(PLAY_STAMP)

# Everything: every provider SDK and optional extra, and the test tools.
$(STAMP): pyproject.toml $(BASE)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP) $(PLAY_STAMP)

install: $(STAMP)

# pong-tiny: a tiny model trained by atari-vlm on RAM-expert demonstrations (not a general VLM), built
# on first use (about 20 s on 2 idle cores) and cached in ~/.cache/atari-vlm ($$ATARI_VLM_CACHE).
play: $(PLAY_STAMP)
	$(BIN)/atari-vlm play --game Pong --model pong-tiny --episodes 2 --max-steps 300 --seed 0 --out runs/play --overwrite

# The report's browser tests drive Debian's chromium; install it when missing (root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser tests will be skipped"

test: install browser
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# vidrop: `make run`, `make test`, `make demo` set up everything on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch where there is no NVIDIA GPU (on these machines it comes from local disk);
# pip must never resolve an unpinned torch by itself there: that pulls a multi-GB CUDA build.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# Debian packages: systemd-python compiles against libsystemd; the tests use real rsync and a throw-away PostgreSQL.
SYSTEM_PACKAGES := libsystemd-dev pkg-config gcc rsync postgresql
PYTEST_ARGS ?=

.PHONY: run test demo check bench system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python system-packages
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test,systemd]"
	touch $@

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

run: $(VENV)/.installed
	$(BIN)/vidrop run

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

check: $(VENV)/.installed
	$(BIN)/vidrop check

# A tiny random-weight model, one example image and prompt dropped into ./inbox, then one pass.
demo: $(VENV)/.installed
	$(BIN)/vidrop demo-model state/demo-model
	mkdir -p inbox/demo
	$(BIN)/python -c "from PIL import Image, ImageDraw; im = Image.new('RGB', (320, 240), (30, 90, 160)); ImageDraw.Draw(im).ellipse((110, 70, 210, 170), fill=(250, 200, 40)); im.save('inbox/demo/sun.png')"
	echo '{"prompt": "a yellow sun over a blue sea", "width": 128, "height": 96, "num_frames": 17, "steps": 4, "fps": 8, "seed": 7}' > inbox/demo/sun.json
	VIDROP_PIPELINE__MODEL=state/demo-model VIDROP_INTAKE__SETTLE_SECONDS=0 $(BIN)/vidrop once
	@echo "done: see outbox/demo/ (sun.mp4, sun.jpg, sun.json, jobs.jsonl); the demo model's video is noise"

bench: $(VENV)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) state *.egg-info

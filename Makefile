# vidrop: `make run`, `make test`, `make demo` set up everything on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch where there is no NVIDIA GPU (on these machines it comes from local disk);
# pip must never resolve an unpinned torch by itself there: that pulls a multi-GB CUDA build.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# Debian packages. `make run` and `make demo` need none (no database, browser or compiler: readiness needs no
# systemd-python). The tests: systemd-python compiles against libsystemd (gcc, pkg-config); real rsync, a
# throw-away PostgreSQL and Samba share, strace (to hold a process at a system call), and the gallery pages
# opened in a headless chromium.
RUN_PACKAGES :=
TEST_PACKAGES := libsystemd-dev pkg-config gcc rsync chromium postgresql samba smbclient strace
SYSTEM_PACKAGES = $(RUN_PACKAGES)
PYTEST_ARGS ?=

.PHONY: run test test-quick lint format demo check bench gallery-screenshot system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What runs the service: vidrop and torch (and NVML, optional, for the waiting message).
$(VENV)/.installed: pyproject.toml | $(BIN)/python system-packages
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[nvml]"
	touch $@

# What the tests use besides: the test tools, the systemd and postgres extras, and the test Debian packages.
$(VENV)/.test-installed: $(VENV)/.installed
	$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(TEST_PACKAGES)"
	$(BIN)/pip install --quiet -e ".[test,systemd,postgres,nvml]"
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

# Everything: lint and format checks first (ruff, configured in pyproject.toml; a violation fails the run before
# any test), then the whole suite, in TEST_WORKERS processes (pytest-xdist; one test file stays on one worker,
# so a file's shared fixture, such as its systemd box or Samba share, is made once). Much of a test's time is a
# `vidrop` process starting or a wait on it, so two workers keep both cores busy.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The edit-test loop: the unit and integration tests (fakes, tiny real models, real SQLite and PostgreSQL; no
# long-running `vidrop` process), under two minutes on the 2-core test machine. `make test` runs everything.
test-quick: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not slow and not long" tests/unit tests/integration $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# What lint asks for, done: imports sorted, unused ones removed, every file formatted.
format: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

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

# docs/gallery.png for the README: a few jobs (one fails on purpose) through the demo model with `vidrop once`,
# the pages written again by `vidrop gallery`, and the folder's page photographed by a headless chromium.
GALLERY_DEMO := $(CURDIR)/build/gallery-demo
GALLERY_ENV := VIDROP_INBOX=$(GALLERY_DEMO)/inbox VIDROP_OUTBOX=$(GALLERY_DEMO)/outbox VIDROP_STATE_DIR=$(GALLERY_DEMO)/state \
	VIDROP_PIPELINE__MODEL=$(GALLERY_DEMO)/model VIDROP_INTAKE__SETTLE_SECONDS=0 HF_HUB_OFFLINE=1
gallery-screenshot: $(VENV)/.test-installed
	rm -rf $(GALLERY_DEMO) && mkdir -p $(GALLERY_DEMO)/inbox/spring docs
	$(BIN)/vidrop demo-model $(GALLERY_DEMO)/model
	$(BIN)/python -c "from PIL import Image, ImageDraw; \
	  im = Image.new('RGB', (320, 240), (30, 90, 160)); ImageDraw.Draw(im).ellipse((110, 70, 210, 170), fill=(250, 200, 40)); im.save('$(GALLERY_DEMO)/inbox/spring/sun.png'); \
	  im = Image.new('RGB', (320, 240), (170, 210, 240)); ImageDraw.Draw(im).polygon([(0, 240), (120, 60), (230, 240)], fill=(90, 90, 110)); im.save('$(GALLERY_DEMO)/inbox/spring/mountain.png'); \
	  im = Image.new('RGB', (320, 240), (240, 230, 210)); ImageDraw.Draw(im).rectangle((90, 60, 230, 180), fill=(200, 40, 40)); im.save('$(GALLERY_DEMO)/inbox/spring/poster <v2> & co.png')"
	echo '{"prompt": "a yellow sun rising over a blue sea", "width": 128, "height": 96, "num_frames": 17, "steps": 4, "fps": 8}' > $(GALLERY_DEMO)/inbox/spring/sun.json
	echo '{"prompt": "clouds drift past the summit, slow push-in", "width": 128, "height": 96, "num_frames": 17, "steps": 4, "fps": 8}' > $(GALLERY_DEMO)/inbox/spring/mountain.json
	echo '{"prompt": "<script>alert(1)</script> shown as text, never run", "width": 96, "height": 96, "num_frames": 9, "steps": 4, "fps": 8}' > '$(GALLERY_DEMO)/inbox/spring/poster <v2> & co.json'
	printf 'a text file with an image name' > $(GALLERY_DEMO)/inbox/spring/logo-final.png
	echo '{"prompt": "the logo spins once"}' > $(GALLERY_DEMO)/inbox/spring/logo-final.json
	$(GALLERY_ENV) $(BIN)/vidrop once || true  # exits 1: logo-final.png fails on purpose
	$(GALLERY_ENV) $(BIN)/vidrop gallery
	profile=$$(mktemp -d); timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
	  --disable-component-update --disable-sync --no-first-run --user-data-dir=$$profile --hide-scrollbars \
	  --window-size=1200,760 --screenshot=$(CURDIR)/docs/gallery.png file://$(GALLERY_DEMO)/outbox/spring/index.html; \
	  status=$$?; rm -rf $$profile; exit $$status

bench: $(VENV)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) state *.egg-info

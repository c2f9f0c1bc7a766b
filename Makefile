# Personify — run `make help` for the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test sanitize lint format bench clean screenshots

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml hatch_build.py src/personify/ingest/_wire_native.c \
		src/personify/_native_buffer.h src/personify/ui/npm/package-lock.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python tools/vendor_console.py
	touch $(STAMP)

install: $(STAMP) ## create .venv and install Personify with every extra and the dev tools

demo: $(STAMP) ## start an embedded demo: a demo source, scripted events, the server on :8000
	$(BIN)/personify demo

test: $(STAMP) ## run the test suite (one process per core, at most 4: pytest-xdist)
	$(BIN)/pytest -q -n auto --maxprocesses 4

# the native tests against a build of the C ingest module with AddressSanitizer and
# UndefinedBehaviorSanitizer; Python itself is not instrumented, so the runtimes are preloaded
sanitize: $(STAMP) ## run the C ingest module's tests under ASan and UBSan (a separate build)
	@command -v gcc >/dev/null || (echo "make sanitize needs gcc" >&2; exit 1)
	@dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	so="$$dir/_wire_native$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')" && \
	include="$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" && \
	gcc -fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g -fPIC -shared -Wall \
		-I "$$include" src/personify/ingest/_wire_native.c -o "$$so" && \
	PERSONIFY_TEST_NATIVE_MODULE="$$so" \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(BIN)/python -m pytest -q -p tests.native_build -p no:cacheprovider \
		tests/ingest/test_wire_native.py tests/ingest/test_wire_differential.py

screenshots: $(STAMP) ## drive the console in Chromium over the demo's data; writes docs/images/console-overview.png
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	mkdir -p docs/images
	PERSONIFY_REQUIRE_SERVICES=1 PERSONIFY_README_SCREENSHOT=docs/images/console-overview.png \
		$(BIN)/pytest -q -p no:cacheprovider tests/e2e/test_console_browser.py

lint: $(STAMP) ## ruff check, ruff format --check, mypy --strict on src, the import layers
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP) ## run every benchmark (each prints one JSON object)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/dedupe.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/lake.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/segments.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/decide.py
	$(BIN)/python bench/assignment.py
	$(BIN)/python bench/experiment_analysis.py

clean: ## remove .venv and local data
	rm -rf $(VENV) data

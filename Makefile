# The README's commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean system-test

MARKED := runtime/serve/web/marked.js

install: $(STAMP) $(MARKED)

$(STAMP): pyproject.toml scripts/build-llama-cpp.sh scripts/engine-source.sh scripts/build-vulkan.sh scripts/build-arm64.sh scripts/static-tools.sh scripts/zig-toolchain.sh scripts/system-packages.sh
	scripts/system-packages.sh build
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The dependencies download while the Vulkan backend compiles.
	house=$$(PYTHON=$(PY) scripts/build-llama-cpp.sh) && \
	  $(PY) -m pip install --quiet --no-index --find-links "$$house" --no-deps --force-reinstall llama-cpp-python==0.3.36 && \
	  { $(PY) -m pip install --quiet --find-links "$$house" -e '.[dev]' numpy diskcache jinja2 & deps=$$!; } && \
	  vk=$$(PYTHON=$(PY) scripts/build-vulkan.sh) && wait $$deps && mkdir -p $(VENV)/llamapyz-gpu && \
	  cp "$$vk" $(VENV)/llamapyz-gpu/libggml-vulkan.so
	# The arm64 side of every file: llama.cpp cross-built from the same source (once, cached).
	arm=$$(PYTHON=$(PY) scripts/build-arm64.sh) && rm -rf $(VENV)/llamapyz-arm64 && \
	  cp -r "$$arm" $(VENV)/llamapyz-arm64
	touch $(STAMP)

# The chat page's Markdown renderer, from the npm registry (git-ignored; see the script).
$(MARKED): scripts/fetch_marked.py
	$(PYTHON) scripts/fetch_marked.py >/dev/null

smollm2.pyz: install
	$(VENV)/bin/pack build "$$($(PY) scripts/fetch_smollm2.py)" -o smollm2.pyz

demo: smollm2.pyz
	chmod +x smollm2.pyz
	./smollm2.pyz -p "The capital of France is" -n 24 --temp 0; echo

# Debian's chromium, qemu-user and lavapipe, installed when missing (as root) or named.
system-test:
	scripts/system-packages.sh test

test: install system-test
	$(PY) -m pytest -q

test-fast: install system-test
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) -m benchmarks --big

lint: install
	$(VENV)/bin/ruff check runtime packager tests benchmarks scripts
	$(VENV)/bin/ruff format --check runtime packager tests benchmarks scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) smollm2.pyz .pytest_cache .mypy_cache .ruff_cache

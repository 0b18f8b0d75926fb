# lamina — `make demo` runs the seed story, `make test` runs the tests. Both set up what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DEBS    := docker-registry skopeo umoci busybox-static bubblewrap pigz zstd chromium openssl
BENCH_DEBS := buildah
STAMP   := $(VENV)/.installed

.PHONY: install debs test demo lint bench clean

install: $(STAMP)

# compileall: bytecode for the editable sources.  Where PYTHONDONTWRITEBYTECODE=1 is set
# (as on this machine) Python reads .pyc files but never writes them, and compiling lamina
# on every run costs more than importing it.  (A source edited later is compiled on each
# run again until the next `make install`; Python never uses a stale .pyc.)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

# The Debian packages the tests use as peers; installed only when missing and we are root.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run as root or install them)"; fi; \
	fi

test: install debs
	$(BIN)/python -m pytest -q -n 2 tests

demo: install debs
	./examples/demo.sh

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: install debs
	@if [ "$$(id -u)" = 0 ] && ! dpkg -s $(BENCH_DEBS) >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_DEBS) >/dev/null; fi
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info

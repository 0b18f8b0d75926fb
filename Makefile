# lamina — `make demo` runs the seed story, `make test` runs the tests. Both set up what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DEBS    := docker-registry skopeo umoci busybox-static bubblewrap pigz zstd chromium
BENCH_DEBS := buildah
STAMP   := $(VENV)/.installed

.PHONY: install debs test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
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

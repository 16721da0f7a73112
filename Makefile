# cryoextract: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo

.PHONY: venv relion demo test lint bench clean

$(VENV)/.installed: pyproject.toml hatch_build.py $(wildcard src/cryoextract/ops/native/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dask]'
	$(PY) -m compileall -q src/cryoextract
	touch $@

venv: $(VENV)/.installed

# RELION 3.1 (Debian package) is the tests' oracle; chromium renders the QC report in a
# test; a C compiler builds the projection loop when the venv is made (hatch_build.py).
# Without root or apt the tests that need them fail, naming what is missing.
relion:
	@missing=""; \
	command -v relion_preprocess >/dev/null 2>&1 || missing="$$missing relion"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium fonts-liberation"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  ( $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing \
	  ) >/dev/null 2>&1 || echo "warning: could not install$$missing (apt-get failed)"; \
	fi

demo: venv
	rm -rf $(DEMO)
	$(PY) -m cryoextract simulate --out $(DEMO)/data --micrographs 4 --size 1024 --particles 60
	cd $(DEMO)/data && ../../$(PY) -m cryoextract extract --micrographs micrographs.star \
	  --coords-dir Picks --coords-suffix _autopick.star --box 160 --bin-to 80 \
	  --norm ramp --invert --out ../extract
	@echo "demo output: $(DEMO)/extract (particles.star, Particles/*.mrcs, summary.json)"

lint: venv
	$(PY) -m ruff check src tests benchmarks hatch_build.py

test: relion venv lint
	$(PY) -m pytest -q

bench: venv relion
	$(PY) benchmarks/extract_vs_relion.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache

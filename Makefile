# Every target bootstraps .venv itself on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench speed conformance clean

$(STAMP): pyproject.toml deploy/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c deploy/constraints.txt -e '.[dev]'
	# the Dask operator's CRDs, to validate deploy/k8s (its package's own deps are not needed)
	$(BIN)/python -m pip download -q --no-deps --dest $(VENV)/vendor "dask-kubernetes==2026.3.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ntkcli.demo

# Debian's headless Chromium, for the web page's test (tests/service/test_web.py)
CHROMIUM := /usr/bin/chromium
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
$(CHROMIUM):
	$(APT) >/dev/null || (apt-get update -q >/dev/null && $(APT) >/dev/null) || \
		sudo -n sh -c "apt-get update -q >/dev/null && $(APT) >/dev/null"

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/memory.py

# Optional, heavy (~2 GB): neural-tangents 0.6.5 in its own venv, compared case by case.
NT_VENV := .venv-nt
$(NT_VENV)/.installed:
	$(PY) -m venv $(NT_VENV)
	$(NT_VENV)/bin/python -m pip install -q --upgrade pip
	$(NT_VENV)/bin/python -m pip install -q "neural-tangents==0.6.5" "jax[cpu]==0.4.23" \
		"jaxlib==0.4.23" "tensorflow==2.15.*" "scipy<1.13"
	touch $@

conformance: $(STAMP) $(NT_VENV)/.installed
	NT_PYTHON=$(NT_VENV)/bin/python $(BIN)/python bench/conformance.py

# issue 17: fused kernels and NumPy rules against neural-tangents, in one run (~40 min)
speed: $(STAMP) $(NT_VENV)/.installed
	NT_PYTHON=$(NT_VENV)/bin/python $(BIN)/python bench/speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

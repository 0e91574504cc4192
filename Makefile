# aidraw: `make demo` (set up + draw) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
AIDRAW := $(VENV)/bin/aidraw
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# on a CPU-only host whose pip would otherwise fetch the multi-GB CUDA build.
TORCH_PIP_ARGS ?=

.PHONY: install demo test lint bench train-demo train-demo-first screenshot clean

install: $(STAMP)

# torch goes in first: a bare torch requirement would pull a multi-GB CUDA build on a CPU host.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	if nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the CUDA build of $(TORCH)"; \
		PIP_FIND_LINKS= $(PIP) install $(TORCH_PIP_ARGS) $(TORCH); \
	else \
		echo "no CUDA GPU: installing the CPU build of $(TORCH)"; \
		$(PIP) install $(TORCH_PIP_ARGS) $(TORCH); \
	fi
	$(PIP) install -e '.[dev]'
	# Only for CLIP's BPE vocabulary file; its dependencies would replace the CPU torch.
	$(PIP) install --no-deps 'open-clip-torch>=2.20,<4'
	# Upscaler networks (engine/upscalers.py). spandrel requires torchvision, which would replace
	# the CPU torch (and PyPI's does not import beside it); its other needs are in pyproject.toml.
	$(PIP) install --no-deps 'spandrel==0.4.2'
	touch $(STAMP)

# Serves the local web chat (http://127.0.0.1:7860, printed at start) until Ctrl+C; with a bot
# token in the environment, `aidraw run` starts that bot instead.
demo: install
	$(AIDRAW) build-demo --if-missing
	$(AIDRAW) run

test: install
	$(PY) -m pytest
	$(MAKE) --no-print-directory lint

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict engine

# Run as modules: `python bench/engine.py` would put bench/ first on sys.path and shadow engine/.
bench: install
	$(PY) -m bench.overhead
	$(PY) -m bench.samplers
	$(PY) -m bench.engine
	$(PY) -m bench.addons
	$(PY) -m bench.demo_model

# Retrain the demo model into engine/demo/weights/ (see docs/demo-model.md; CI never retrains:
# the weights are committed). It was trained in three parts: the first, from seed 0 (about 50
# minutes on 2 CPU cores; `make train-demo-first`), is the weights committed at 87c9507; the
# second went on from those (its command is in training-log.txt), committed at
# $(DEMO_PREVIOUS_PART); `make train-demo` is the third, on from the second (on one thread:
# the same thread count gives the same weights).
DEMO_PREVIOUS_PART := 3d38041
train-demo: install
	rm -rf out/demo-base && mkdir -p out/demo-base
	for file in unet.safetensors vae.safetensors text_encoder.safetensors training-log.txt; do \
	  git show $(DEMO_PREVIOUS_PART):engine/demo/weights/$$file > out/demo-base/$$file; \
	done
	OMP_NUM_THREADS=1 $(PY) -m engine.demo.training --resume out/demo-base

train-demo-first: install
	OMP_NUM_THREADS=$$(nproc) $(PY) -m engine.demo.training --out out/demo-base

# Refresh the README's docs/screenshot.png: the browser test, keeping its screenshot.
screenshot: install
	AIDRAW_UPDATE_SCREENSHOT=1 $(PY) -m pytest -q tests/web/test_web_e2e.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache *.egg-info

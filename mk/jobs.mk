# The job steps (jobs/edgetune_jobs/steps, contract in contract/edgetune_contract): ML tests and benchmarks. `make install` provides the
# CPU ML stack (requirements/ml.txt + the cached mmcv wheel, scripts/install-ml.sh).
.PHONY: install-ml test-ml test-jobs bench-train bench-edge bench-store

install-ml:
	bash scripts/install-ml.sh $(PY)

# The ML tests of the job steps (real mmdet/mmdeploy/onnxruntime on CPU).
test-ml: install
	$(PYTEST) tests/ml -m ml

# Data/VIA/generate unit tests + the ML tests of the job steps.
test-jobs: install
	$(PYTEST) tests/unit tests/ml -k 'via or generate or data or finetune or export or engine or verify or benchmark'

# The demo's recipe (examples/local) from the generated base model with 1 and 2 torch threads:
# base -> fine-tuned mAP, lift, the issue-11 targets. Prints figures; never fails.
# BENCH_TRAIN_ARGS="--repeat 3 --random-init" for the spread and the random-init control;
# BENCH_TRAIN_ARGS="--overhead" for the step's training overhead next to plain mmengine.
# Then images/s of distributed training (torchrun, gloo) with 1 and 2 processes side by side
# (benchmarks/bench_train_replicas.py; BENCH_REPLICAS_ARGS="--epochs 10 --json out.json").
BENCH_TRAIN_ARGS ?=
BENCH_REPLICAS_ARGS ?=
bench-train: install
	$(PY) benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)
	$(PY) benchmarks/bench_train_replicas.py --replicas 1,2 $(BENCH_REPLICAS_ARGS)

# Latency of the converted model (benchmarks/bench_edge.py, the export/benchmark steps).
# mmdeploy's own SDK (mmdeploy-runtime, bundling onnxruntime 1.15.1) is the comparison; it
# lives in its own venv so that its libraries never meet the job steps' onnxruntime.
BENCH_EDGE_ARGS ?=
SDK_VENV := $(EDGETUNE_CACHE)/mmdeploy-sdk-venv
MMDEPLOY_RUNTIME_VERSION := 1.3.1
# the SDK wheel declares no dependencies; the benchmark's SDK process reads its image with cv2.
# numpy 1.x: the wheel's pybind11 predates numpy 2; opencv 4.10 is the last built for both.
SDK_NUMPY_VERSION := 1.26.4
SDK_OPENCV_VERSION := 4.10.0.84
SDK_VENV_PACKAGES := mmdeploy-runtime==$(MMDEPLOY_RUNTIME_VERSION) numpy==$(SDK_NUMPY_VERSION) \
	opencv-python-headless==$(SDK_OPENCV_VERSION)
SDK_VENV_STAMP := $(SDK_VENV)/.ok-$(MMDEPLOY_RUNTIME_VERSION)-$(SDK_NUMPY_VERSION)-$(SDK_OPENCV_VERSION)
bench-edge: install $(SDK_VENV_STAMP)
	$(PY) benchmarks/bench_edge.py --sdk-python $(SDK_VENV)/bin/python $(BENCH_EDGE_ARGS)

$(SDK_VENV_STAMP):
	rm -rf $(SDK_VENV) && python3.11 -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install -q --disable-pip-version-check $(SDK_VENV_PACKAGES)
	$(SDK_VENV)/bin/python -c "import cv2, numpy, mmdeploy_runtime" && touch $@

# What object storage costs each step (download + upload through a real SeaweedFS on loopback)
# next to the same step on local paths, in one alternating run. Prints figures and JSON.
BENCH_STORE_ARGS ?=
bench-store: install
	$(PY) benchmarks/bench_store.py --json build/bench-store.json $(BENCH_STORE_ARGS)

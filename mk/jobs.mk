# The job steps (jobs/edgetune_jobs): ML tests and benchmarks. `make install` provides the
# CPU ML stack (requirements/ml.txt + the cached mmcv wheel, scripts/install-ml.sh).
.PHONY: install-ml test-ml test-jobs bench-train bench-edge

install-ml:
	bash scripts/install-ml.sh $(PY)

# The ML tests of the job steps (real mmdet/mmdeploy/onnxruntime on CPU).
test-ml: install
	$(PYTEST) tests/ml -m ml

# Data/VIA/generate unit tests + the ML tests of the job steps.
test-jobs: install
	$(PYTEST) tests/unit tests/ml -k 'via or generate or data or finetune or export or engine or verify or benchmark'

# Fine-tunes RTMDet-tiny on a generated set: AP per checkpoint, seconds per iteration next
# to plain mmengine training of the same config. Prints figures; never fails on a time.
# BENCH_TRAIN_ARGS="--epochs 120 --size 320 --image-size 320" for the long run.
BENCH_TRAIN_ARGS ?=
bench-train: install
	$(PY) benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)

# Latency of the converted model (benchmarks/bench_edge.py, the export/benchmark steps).
BENCH_EDGE_ARGS ?=
bench-edge: install
	$(PY) benchmarks/bench_edge.py $(BENCH_EDGE_ARGS)

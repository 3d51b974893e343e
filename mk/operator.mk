# The operator (issue 3): run it locally, regenerate the CRDs, benchmark it.
OP_PY := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
OP_ENV := PYTHONPATH=$(CURDIR)/operator:$(CURDIR)/jobs:$(CURDIR)/localcluster$${PYTHONPATH:+:$$PYTHONPATH}
.PHONY: operator-run crds crds-check test-operator bench-operator

operator-run:  ## run the operator against $KUBECONFIG (or OPERATOR_KUBECONFIG); OPERATOR_ARGS="-n demo" etc.
	$(OP_ENV) $(OP_PY) -m edgetune_operator $(if $(OPERATOR_KUBECONFIG),--kubeconfig $(OPERATOR_KUBECONFIG),$(if $(KUBECONFIG),--kubeconfig $(KUBECONFIG))) $(OPERATOR_ARGS)

crds:  ## regenerate crds/*.yaml from operator/edgetune_operator/schema.py
	$(OP_ENV) $(OP_PY) -m edgetune_operator.crdgen

crds-check:
	$(OP_ENV) $(OP_PY) -m edgetune_operator.crdgen --check

test-operator:  ## the operator's unit tests, then its cluster tests
	$(OP_ENV) $(OP_PY) -m pytest tests/unit/test_operator*.py tests/unit/test_crd*.py tests/unit/test_manifests*.py tests/unit/test_metrics*.py $(PYTEST_ARGS)
	$(OP_ENV) $(OP_PY) -m pytest tests/cluster/test_crd*.py tests/cluster/test_operator*.py $(PYTEST_ARGS)

# Two runs: N FinetuneJobs (BENCH_N, default 500): apply -> Job latency p50/p99, operator peak RSS;
# then BENCH_LOAD_N (default 2000) with the operator restarted halfway: time to converge, peak RSS,
# no Job created twice.
BENCH_LOAD_N ?= 2000
bench-operator: cluster-build
	$(OP_ENV) $(OP_PY) benchmarks/bench_operator.py $(if $(BENCH_N),-n $(BENCH_N)) $(BENCH_OPERATOR_ARGS)
	$(OP_ENV) $(OP_PY) benchmarks/bench_operator.py -n $(BENCH_LOAD_N) --restart-at $$(( $(BENCH_LOAD_N) / 2 ))

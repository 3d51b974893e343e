# localcluster/: a real Kubernetes control plane (built from k8s.io/kubernetes) and a node
# agent that runs Pods as local processes. See localcluster/README.md.
LC_PY := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
LC_RUN := PYTHONPATH=$(CURDIR)/localcluster$${PYTHONPATH:+:$$PYTHONPATH} $(LC_PY) -m edgetune_localcluster
# cluster-up/-down/-status work on localcluster/.data/dev unless EDGETUNE_LOCALCLUSTER_DIR is set
.PHONY: cluster-build cluster-up cluster-down cluster-status test-localcluster

cluster-build:  ## build (once; a version stamp decides) the edgetune-k8s control-plane binary
	$(LC_RUN) build

cluster-up: cluster-build  ## start the local cluster; prints the KUBECONFIG to export
	$(LC_RUN) up

cluster-down:  ## stop every process the local cluster started
	$(LC_RUN) down

cluster-status:
	$(LC_RUN) status

test-localcluster: cluster-build  ## the local cluster's own tests
	$(PYTEST) $(wildcard tests/cluster/test_localcluster*.py) $(PYTEST_ARGS)

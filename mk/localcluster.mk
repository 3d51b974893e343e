# localcluster/: a real Kubernetes cluster on this machine — control plane and kubelets built
# from k8s.io/kubernetes, containerd and CoreDNS from the Go module proxy, runc/CNI/buildah from
# Debian, images built here. See localcluster/README.md. Needs root (namespaces, cgroups).
LC_PY := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
LC_RUN := PYTHONPATH=$(CURDIR)/localcluster$${PYTHONPATH:+:$$PYTHONPATH} $(LC_PY) -m edgetune_localcluster
# cluster-up/-down/-status work on localcluster/.data/dev unless EDGETUNE_LOCALCLUSTER_DIR is set
.PHONY: cluster-build ml-image cluster-up cluster-down cluster-status test-localcluster

cluster-build:  ## build/install (once; version stamps decide) the Kubernetes binary, containerd, CoreDNS, node images
	$(LC_RUN) build

ml-image: install  ## cluster-build + the job steps' CPU image (trainer-cpu; up to 12 min cold, cached by its recipe's hash)
	$(LC_RUN) build --ml-image

cluster-up: cluster-build  ## start the local cluster; prints the KUBECONFIG to export
	$(LC_RUN) up

cluster-down:  ## stop every process the local cluster started
	$(LC_RUN) down

cluster-status:
	$(LC_RUN) status

test-localcluster: cluster-build  ## the local cluster's own tests
	$(PYTEST) $(wildcard tests/cluster/test_localcluster*.py) tests/cluster/test_nodes.py $(PYTEST_ARGS)

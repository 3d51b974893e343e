# Helm chart, images, Argo CD health checks, Grafana dashboard / Prometheus rules.
# Tools (helm, hadolint, lua5.1, promtool) come from scripts/install-tools.sh (cached in
# $(EDGETUNE_CACHE)/tools; a few seconds when present).
.PHONY: tools chart-sync chart-lint chart-template images images-lint argocd-cm test-chart

CHART_DIR := charts/edgetune
CHART_OUT := build/chart
TOOLS_BIN = $(EDGETUNE_CACHE)/tools/bin
HELM = $(TOOLS_BIN)/helm
CHART_RELEASE ?= edgetune
CHART_NAMESPACE ?= edgetune-system
# Every optional object on, so that lint and template see all templates.
CHART_ALL_ON := --set serviceMonitor.enabled=true --set prometheusRule.enabled=true \
	--set grafanaDashboard.enabled=true --set storage.create=true
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' $(CHART_DIR)/Chart.yaml)
IMAGE_PREFIX ?= ghcr.io/edgetune

tools:
	bash scripts/install-tools.sh

# The chart ships copies of crds/*.yaml and operator/rbac/*.yaml (Helm cannot read files
# outside the chart); tests/unit/test_chart.py fails when they drift.
chart-sync: argocd-cm
	@test -n "$$(ls crds/*.yaml 2>/dev/null)" || { echo "chart-sync: no crds/*.yaml yet" >&2; exit 1; }
	rm -f $(CHART_DIR)/crds/*.yaml && cp crds/*.yaml $(CHART_DIR)/crds/
	mkdir -p $(CHART_DIR)/files/rbac && rm -f $(CHART_DIR)/files/rbac/*.yaml
	cp operator/rbac/*.yaml $(CHART_DIR)/files/rbac/

argocd-cm:
	$(PY) deploy/argocd/gen_argocd_cm.py

chart-lint: tools
	$(HELM) lint --strict $(CHART_DIR)
	$(HELM) lint --strict $(CHART_DIR) $(CHART_ALL_ON)

chart-template: tools
	mkdir -p $(CHART_OUT)
	$(HELM) template $(CHART_RELEASE) $(CHART_DIR) --namespace $(CHART_NAMESPACE) --include-crds \
		$(CHART_ALL_ON) > $(CHART_OUT)/edgetune.yaml
	@echo "wrote $(CHART_OUT)/edgetune.yaml"

# No Docker engine on the development machines: print what to run where one exists.
images:
	@echo "Building the images needs a Docker engine (BuildKit); none is needed for tests."
	@echo "From the repository root, on a machine with Docker:"
	@echo "  docker build -f images/operator/Dockerfile -t $(IMAGE_PREFIX)/operator:$(IMAGE_TAG) ."
	@echo "  docker build -f images/trainer/Dockerfile -t $(IMAGE_PREFIX)/trainer:$(IMAGE_TAG) ."
	@echo "  docker buildx build --platform linux/arm64 -f images/jetson/Dockerfile -t $(IMAGE_PREFIX)/jetson:$(IMAGE_TAG) ."
	@echo "  docker build -f images/cpu-edge/Dockerfile -t $(IMAGE_PREFIX)/cpu-edge:$(IMAGE_TAG) ."
	@echo "(make images-lint lints the Dockerfiles here.)"

images-lint: tools
	$(TOOLS_BIN)/hadolint --config images/hadolint.yaml images/operator/Dockerfile images/trainer/Dockerfile images/jetson/Dockerfile images/cpu-edge/Dockerfile

test-chart: tools
	$(PYTEST) tests/unit/test_chart.py tests/unit/test_images.py tests/unit/test_argocd_health.py tests/unit/test_dashboard.py

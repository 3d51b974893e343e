# make demo / demo-down: the whole pipeline on the local cluster (scripts/demo.py).
.PHONY: demo demo-down demo-status
demo: install cluster-build
	$(PY) scripts/demo.py up

demo-down:
	@if [ -x $(PY) ]; then $(PY) scripts/demo.py down; else echo "nothing to stop (no .venv)"; fi

demo-status:
	$(PY) scripts/demo.py status

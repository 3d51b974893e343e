# make demo / demo-down: the whole pipeline on the local cluster (scripts/demo.py).
# The prerequisites are the installation (each cached under its version stamp: the Python
# environment, the cluster's binaries and node images, the CPU job image); scripts/demo.py is
# the demo itself, and prints where its time went.
.PHONY: demo demo-down demo-status
demo: install ml-image
	$(PY) scripts/demo.py up

demo-down:
	@if [ -x $(PY) ]; then $(PY) scripts/demo.py down; else echo "nothing to stop (no .venv)"; fi

demo-status:
	$(PY) scripts/demo.py status

# Two commands do everything on a fresh machine:
#   make demo   -> builds the environment if missing, runs the end-to-end demo
#   make test   -> builds the environment if missing, runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: env demo test bench clean

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# Face Mesh model ships inside this wheel; its numpy<2 / opencv-contrib pins are wrong for us.
	# lpips and piq are the tests' metric references; their torchvision pin would pull a CUDA
	# build that cannot import beside the CPU torch (pyproject.toml's dev extra says more).
	$(PY) -m pip install -q --no-deps "mediapipe==0.10.21" "invisible-watermark==0.2.0" \
	  "lpips==0.1.4" "piq==0.8.0"
	$(PY) -c "import mediapipe, imwatermark, jax, flax, orbax.checkpoint, grain, av, cv2, librosa"
	touch $(STAMP)

demo: env
	$(PY) -m ip_lap_jax.demo --out demo_out

# The multi-process training tests run after the rest, alone: each of their train.py
# processes needs ~4 GB while compiling, too much beside another xdist worker on 24 GiB.
test: env
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=40 tests
	$(PY) -m pytest -q -m multihost --durations=5 tests/test_multihost.py

bench: env
	$(PY) benchmarks/bench_models.py

clean:
	rm -rf $(VENV) demo_out

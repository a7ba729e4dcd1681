# CXRFuse: the two commands a newcomer types.
#   make demo   installs everything if needed, then runs the pipeline on built-in synthetic data
#   make test   installs everything if needed, then runs lint and the whole test suite
PY := .venv/bin/python
export YOLO_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/setup-browser.sh
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/convert.py
	$(PY) bench/fusion.py
	$(PY) bench/eval.py
	$(PY) bench/predict.py
	$(PY) bench/sweep.py
	$(PY) bench/results_io.py
	$(PY) bench/gpu.py

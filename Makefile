# emovit: `make test` and `make demo` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
NOTEBOOK := vit_with_gans_emotion_prediction.ipynb
OUT ?= outputs
DATA_DIR ?=
export PATH := $(BIN):$(PATH)

OLD_VENV ?= .venv-old

.PHONY: gpu-check bench venv check test test-old lint check-notebook check-readme notebook readme demo run validate clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install runtime + dev requirements

lint: venv
	$(BIN)/ruff check emovit tools tests benchmarks notebook
	$(BIN)/ruff format --check emovit tools tests benchmarks notebook

check-notebook: venv  ## fail if the committed notebook is not a fresh build
	$(PY) -m tools.build_notebook --check

check-readme: venv  ## fail if README's configuration reference differs from Config
	$(PY) -m tools.readme_config --check

notebook: venv  ## rebuild the notebook from notebook/ and emovit/
	$(PY) -m tools.build_notebook

readme: venv  ## regenerate README's configuration reference from Config
	$(PY) -m tools.readme_config

check: lint check-notebook check-readme  ## the fast loop (< 3 min): ruff, notebook and README checks, tests not marked slow
	$(PY) -m pytest -m "not slow" -q

# make test runs three lanes at one torch thread each, because on 2 cores one-thread jobs side by
# side get through more work than one two-thread job (the demo GAN's convolutions: 1.35x faster on
# 2 threads, not 2x), and a third lane keeps both cores busy to the end. First the demo data set
# that the end-to-end runs and the data tests share is written once, on both cores. Lane 1: the demo
# end-to-end run and the tests that read it. Lane 2: every other test, the full-size smoke run
# included. Lane 3: the older stack's venv installs (mostly waiting on pip), then test-old. Lanes 1
# and 3 print after lane 2.
# The learning tests' thresholds were measured at one and two threads (docs/experiments.md).
LANE_1 := tests/test_notebook_e2e.py tests/test_curves.py tests/test_predict.py
LANE_TMP ?= $(or $(TMPDIR),/tmp)/emovit-test-lanes
DEMO_DATA := $(LANE_TMP)/demo_data
test: lint check-notebook check-readme  ## the full gate CI runs: ruff, checks, every test and test-old, in three lanes
	rm -rf $(LANE_TMP) && mkdir -p $(LANE_TMP)
	( $(MAKE) $(OLD_VENV)/.installed > $(OLD_VENV)-install.log 2>&1 || { cat $(OLD_VENV)-install.log; exit 1; }; \
	  until test -f $(DEMO_DATA)/.emovit_demo.json; do sleep 5; done; \
	  OMP_NUM_THREADS=1 EMOVIT_DEMO_DATA=$(DEMO_DATA) $(MAKE) test-old ) > $(LANE_TMP)/lane3.log 2>&1 & lane3=$$!; \
	$(PY) -m emovit.demo_data $(DEMO_DATA) --songs 120 --seed 42 || { kill $$lane3; exit 1; }; \
	export OMP_NUM_THREADS=1 EMOVIT_DEMO_DATA=$(DEMO_DATA); \
	$(PY) -m pytest -p no:cacheprovider --basetemp=$(LANE_TMP)/1 $(LANE_1) > $(LANE_TMP)/lane1.log 2>&1 & lane1=$$!; \
	$(PY) -m pytest --basetemp=$(LANE_TMP)/2 $(addprefix --ignore=,$(LANE_1)); lane2=$$?; \
	wait $$lane1; lane1=$$?; wait $$lane3; lane3=$$?; \
	echo "==== lane 1: the demo end-to-end run and the tests that read it ===="; \
	cat $(LANE_TMP)/lane1.log; \
	echo "==== lane 3: make test-old (the older stack) ===="; \
	cat $(LANE_TMP)/lane3.log; \
	echo "lane 1 exit $$lane1, lane 2 exit $$lane2, lane 3 exit $$lane3"; \
	test $$lane1 -eq 0 && test $$lane2 -eq 0 && test $$lane3 -eq 0

$(OLD_VENV)/.installed: requirements.txt requirements-dev.txt constraints-old.txt pyproject.toml
	test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install -q -r requirements-dev.txt -c constraints-old.txt
	$(OLD_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

# On Kaggle's older stack: the end-to-end notebook (its GAN shortened to 40 steps, two training
# seeds and the demo's ablation arm, which the main stack's end-to-end run leaves out; the learning
# thresholds left to the main stack) and the parsers of DEAM's files; the rest runs once, in `test`.
DEMO_ARMS := {"vit_no_augment": {"random_crop": false, "spec_augment": false, "test_crops": 1}}
test-old: $(OLD_VENV)/.installed  ## the end-to-end notebook and the DEAM parsers on the stack Kaggle's image has
	EMOVIT_E2E_OVERRIDES='{"gan_steps": 40, "seeds": [42, 7], "vit_epochs": 1, "arms": $(DEMO_ARMS)}' $(OLD_VENV)/bin/python -m pytest -p no:cacheprovider \
	    -m "(notebook and not learning) or not slow" tests/test_notebook_e2e.py tests/test_predict.py \
	    tests/test_curves.py tests/test_deam.py tests/test_features.py tests/test_opensmile.py

bench: venv  ## measure stage throughput and memory -> benchmarks/results.json
	$(PY) -m benchmarks.bench

gpu-check: venv  ## on a GPU machine: full-size GAN + ViT-B/16 steps in fp16 and bf16 -> benchmarks/gpu.json
	$(PY) -m tools.gpu_check --out benchmarks/gpu.json

validate: venv  ## run every check and the demo; write validation_report.md from what they produced
	$(PY) -m tools.validate

demo: venv  ## run the built notebook headless on the synthetic demo data (CPU, minutes)
	mkdir -p $(OUT)
	time $(BIN)/papermill $(NOTEBOOK) $(OUT)/demo_run.ipynb -k python3 \
	    -p PRESET demo -p DATA_DIR $(OUT)/demo_data -p OUTPUT_DIR $(OUT)/demo

NPROC ?= 0
run: venv  ## full run on your own DEAM copy: make run DATA_DIR=/path/to/deam [NPROC=N GPUs, 0 = all] [OUT=outputs]
	@test -n "$(DATA_DIR)" || { echo "usage: make run DATA_DIR=/path/to/deam [NPROC=N] [OUT=outputs]"; exit 2; }
	mkdir -p $(OUT)
	$(BIN)/papermill $(NOTEBOOK) $(OUT)/run.ipynb -k python3 \
	    -p PRESET kaggle -p DATA_DIR $(DATA_DIR) -p OUTPUT_DIR $(OUT)/run -y '{"OVERRIDES": {"ddp_processes": $(NPROC)}}'

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache $(OLD_VENV) $(OLD_VENV)-install.log

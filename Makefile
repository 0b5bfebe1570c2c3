# Everything runs from a project virtual environment (.venv), created and refreshed on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# requirements.lock pins the exact tested versions (constraints); pyproject.toml holds the ranges.
LOCK := requirements.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha256sum | cut -c1-16)
DEMO_OUT ?= medsynth-demo
PYTEST_ARGS ?=

.PHONY: install lock demo test bench clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -c $(LOCK) -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# After a change of pyproject.toml: install what it adds into .venv (no pins), then pin what .venv holds.
lock:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -e '.[test]'
	{ sed -n '/^#/p' $(LOCK); $(BIN)/pip freeze --exclude-editable; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	rm -f $(VENV)/.installed-*

demo: install
	$(BIN)/medsynth demo --out $(DEMO_OUT)

# pytest exits 5 when it collects no test: make treats that, like any failure, as an error.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_OUT)

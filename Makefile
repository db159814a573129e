# The two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint format bench install fashion-mnist clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's dataset-fashion-mnist when apt is usable as root; otherwise `alexnet` downloads
# the files when online or says exactly how to get them.
fashion-mnist:
	@if [ ! -d $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "apt-get could not install dataset-fashion-mnist; falling back to download"; \
	fi

demo: install fashion-mnist
	$(VENV)/bin/alexnet demo --out runs/demo

lint: install
	$(VENV)/bin/ruff check src tests scripts hubconf.py
	$(VENV)/bin/ruff format --check src tests scripts hubconf.py

format: install
	$(VENV)/bin/ruff format src tests scripts hubconf.py
	$(VENV)/bin/ruff check --fix src tests scripts hubconf.py

test: lint
	$(VENV)/bin/pytest -q

bench: install
	$(VENV)/bin/alexnet benchmark lrn
	$(VENV)/bin/alexnet benchmark model
	$(VENV)/bin/alexnet benchmark data
	$(VENV)/bin/alexnet benchmark e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info

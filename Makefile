# tsemu: every target installs what it needs into a local venv (.venv) first.
#   make run    start the emulator on its embedded default scenario (socket: see README)
#   make test   install and run the test suite
#   make bench  run the benchmarks (results in bench/results/)
#   make lint   ruff and mypy
#   make soak   a long run: clients that come and go or are killed, 1,000,000 exits to 64
#               listeners; descriptors, clients and memory must come back (scripts/soak.py)
#   make golden re-capture the kernel's replies into tests/golden (needs a taskstats kernel, root);
#               KERNEL=6.1|6.12|sid boots Debian's kernel of that suite under QEMU instead
#   make test-vm  the optional test that boots a kernel under QEMU (slow)
#   make image  the container image (tsemu:latest); with no registry reachable, on a base made
#               from the Debian mirror (BASE=local, the default when root; docker/make-base-image.sh)
#   make test-docker  only the tests that build and run the image (pytest -m docker; starts dockerd
#               when root and it is not running)
#   make clean  remove the venv and build leftovers

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages the tests use: a C compiler for the shim and the test clients (and libc6-dev's
# static libc for the seccomp supervisor, tsemu-run), Go and the mdlayher netlink packages for
# the Go test clients (tests/clients/gotaskstats), iproute2
# for `genl`, procps for `pgrep`, musl-tools for a static musl client (musl-gcc: the scratch
# client image, tests/scratchimage.py), tshark to dissect captures (its question about
# wireshark-common's setuid dumpcap answered "no" beforehand): installed when missing and
# when we may (root, apt-get).

.PHONY: install system-deps bytecode run test bench soak lint golden golden-deps golden-all test-vm clean \
	docker-deps image test-docker

install: $(STAMP)

system-deps:
	@missing=""; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	test -e /usr/lib/x86_64-linux-gnu/libc.a || missing="$$missing libc6-dev"; \
	command -v go >/dev/null 2>&1 || missing="$$missing golang-go"; \
	test -d /usr/share/gocode/src/github.com/mdlayher/genetlink || \
	  missing="$$missing golang-github-mdlayher-genetlink-dev golang-github-mdlayher-netlink-dev"; \
	command -v genl >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v pgrep >/dev/null 2>&1 || missing="$$missing procps"; \
	command -v iotop-c >/dev/null 2>&1 || missing="$$missing iotop-c"; \
	command -v tshark >/dev/null 2>&1 || missing="$$missing tshark"; \
	command -v musl-gcc >/dev/null 2>&1 || missing="$$missing musl-tools"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    echo "wireshark-common wireshark-common/install-setuid boolean false" \
	      | debconf-set-selections 2>/dev/null || true; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "note: missing$$missing (install them for the shim and the client tests)"; \
	  fi; \
	fi

$(STAMP): pyproject.toml setup.py $(wildcard shim/*.c shim/*.h supervisor/*.c supervisor/*.h)
	@$(MAKE) -s system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@touch $@

# An editable install leaves the sources uncompiled (and PYTHONDONTWRITEBYTECODE, where set,
# keeps Python from caching what it compiles): byte-compile them as a regular install would,
# so `tsemu serve` starts without compiling tsemu first (about 40 ms). Only stale files are
# compiled again.
bytecode: install
	@$(PY) -m compileall -q wire emulator cli tsemu

run: install bytecode
	$(VENV)/bin/tsemu serve

# The docker tests run when an engine answers: docker-deps starts one as root (and the test
# target stops it again when it did).
test: install docker-deps
	@rc=0; $(PY) -m pytest || rc=$$?; \
	if [ -f build/dockerd.pid ]; then kill "$$(cat build/dockerd.pid)" 2>/dev/null; \
	  for i in $$(seq 50); do kill -0 "$$(cat build/dockerd.pid)" 2>/dev/null || break; sleep 0.2; done; \
	  rm -f build/dockerd.pid; fi; \
	exit $$rc

# The benchmarks' extras (matplotlib for the chart, py-spy for profiles) stay out of `make test`.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	@touch $@

bench: install $(BENCH_STAMP) bytecode
	$(PY) -m bench

soak: install bytecode
	$(PY) scripts/soak.py

# mypy sees the package as it is installed (wire/ is tsemu.wire, ...) through a symlink tree.
lint: install
	$(VENV)/bin/ruff check wire emulator cli tsemu tests bench scripts setup.py
	@rm -rf build/typecheck && mkdir -p build/typecheck/tsemu
	@for f in tsemu/*.py; do ln -s ../../../$$f build/typecheck/tsemu/; done
	@ln -s ../../../tsemu/testing build/typecheck/tsemu/testing
	@for d in wire emulator cli; do ln -s ../../../$$d build/typecheck/tsemu/$$d; done
	cd build/typecheck && ../../$(VENV)/bin/mypy -p tsemu

# `make golden` captures the host kernel; `make golden KERNEL=6.1|6.12|sid` boots Debian's own
# kernel of that suite under QEMU (software emulation) and captures it into
# tests/golden/kernel-MAJOR.MINOR.json (scripts/golden_vm.py; about a minute each).
# `make golden-all` does the three. The downloads and the console logs stay in build/golden-vm.
KERNEL ?=
GOLDEN_KERNELS := 6.1 6.12 sid

golden-deps:
	@missing=""; \
	command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-system-x86"; \
	test -x /bin/busybox && ! ldd /bin/busybox >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing; \
	  else \
	    echo "golden: missing$$missing (needed to boot other kernels)"; exit 1; \
	  fi; \
	fi

golden: install
ifeq ($(strip $(KERNEL)),)
	$(PY) scripts/capture_golden.py tests/golden/kernel.json
else
	@$(MAKE) -s golden-deps
	$(PY) scripts/golden_vm.py --kernel $(KERNEL)
endif

golden-all: install
	@$(MAKE) -s golden-deps
	@for k in $(GOLDEN_KERNELS); do $(PY) scripts/golden_vm.py --kernel $$k || exit 1; done

# The optional test that boots a kernel under QEMU (marked `vm`, outside `make test`).
test-vm: install
	@$(MAKE) -s golden-deps
	$(PY) -m pytest -m vm -p no:cacheprovider tests/test_golden_vm.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis tsemu/libtsemu-shim.so tsemu/tsemu-run
	find wire emulator cli tsemu tests bench scripts -name __pycache__ -type d -prune -exec rm -rf {} +

# The differential fuzz against the host kernel (root and CONFIG_TASKSTATS): 10 seeds of 3,000
# mutated datagrams, each sent to the kernel and to an in-process tsemu; fails on any
# difference tests/known_differences.py does not name. SEEDS and CASES override the counts.
.PHONY: fuzz
SEEDS ?= 10
CASES ?= 3000
fuzz: install
	$(PY) scripts/fuzz_differential.py --seeds $(SEEDS) --cases $(CASES)

# The container image. docker-deps installs Debian's docker.io and mmdebstrap when missing (as
# root), and musl-tools and busybox-static for the FROM-scratch client image the docker tests
# make (tests/scratchimage.py), and starts dockerd when no engine answers (its log:
# build/dockerd.log). BASE=local (the
# default as root) builds on docker/make-base-image.sh's tsemu-base:bookworm, made from the
# Debian mirror apt uses, for machines that reach no image registry; BASE=IMAGE names any
# other base (PYTHON_IMAGE); BASE= (empty) keeps the Dockerfile's python:3.11-slim-bookworm.
LOCAL_BASE := tsemu-base:bookworm
BASE ?= $(if $(filter 0,$(shell id -u)),local,)

docker-deps:
	@missing=""; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
	command -v musl-gcc >/dev/null 2>&1 || missing="$$missing musl-tools"; \
	test -x /bin/busybox && ! ldd /bin/busybox >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "note: missing$$missing (the docker tests will skip)"; \
	  fi; \
	fi
	@if ! docker info >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then \
	  mkdir -p build; echo "starting dockerd (log: build/dockerd.log)"; \
	  nohup dockerd >build/dockerd.log 2>&1 & echo $$! > build/dockerd.pid; \
	  for i in $$(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done; \
	fi

image: docker-deps
ifeq ($(BASE),local)
	sh docker/make-base-image.sh $(LOCAL_BASE)
	docker build --build-arg PYTHON_IMAGE=$(LOCAL_BASE) -t tsemu:latest .
else ifneq ($(strip $(BASE)),)
	docker build --build-arg PYTHON_IMAGE=$(BASE) -t tsemu:latest .
else
	docker build -t tsemu:latest .
endif

# Builds the image once per content of the tree (tsemu:src-HASH; about 20 s, then a lookup).
test-docker: install docker-deps
	$(PY) -m pytest -m docker -rs -p no:cacheprovider tests/test_docker.py \
	    tests/test_container_module.py tests/test_recipes.py

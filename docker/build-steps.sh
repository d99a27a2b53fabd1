#!/bin/sh
# The build steps of tsemu's container image, kept out of the Dockerfile so CI can run them:
# the Dockerfile's build stage runs this script, and tests/test_docker.py runs it against a
# throwaway prefix, then starts the result the way the image does.
#
#   docker/build-steps.sh SOURCE PREFIX
#
# SOURCE is a tsemu source tree; PREFIX (absent or empty) becomes a self-contained install:
#
#   PREFIX/bin/tsemu                 the command (a venv of its own, no pip or setuptools left)
#   PREFIX/bin/tsemu-entrypoint      the image's entry point (docker/entrypoint.sh)
#   PREFIX/bin/tsemu-health          the image's health check (docker/health.c)
#   PREFIX/libtsemu-shim.so          a link to the LD_PRELOAD shim the install built
#   PREFIX/share/tsemu/examples/     the example scenarios
#
# Needs python3 (3.11+, with venv) and, for the shim, a C compiler: when there is none and the
# script runs as root where apt-get exists (the image's build stage), it installs gcc and
# libc6-dev there; the build stage is thrown away, so the image carries no compiler.
# Environment: PYTHON (default python3); pip honours PIP_* (the Dockerfile sets
# PIP_NO_CACHE_DIR=1; CI keeps its cache).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 SOURCE PREFIX" >&2
    exit 2
fi
source_dir=$(cd "$1" && pwd)
prefix=$2
python=${PYTHON:-python3}

say() { echo "build-steps: $*" >&2; }

# pip's CA bundle: the system's, where there is one and pip was given none (a base image made
# by make-base-image.sh carries the host's, which knows a TLS-inspecting proxy's root).
if [ -z "${PIP_CERT:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi

# 1. A C compiler for the shim.
if ! command -v gcc >/dev/null 2>&1 && ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing gcc and libc6-dev (build stage only)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            gcc libc6-dev >/dev/null
        rm -rf /var/lib/apt/lists/*
    else
        say "no C compiler (gcc or cc): the shim cannot be built"
        exit 1
    fi
fi

# 2. A clean copy of what the package is built from: an in-tree build writes build/ and
#    *.egg-info into its source, and a shim left there by an editable install must not
#    stand in for the one this build compiles.
stage=$(mktemp -d "${TMPDIR:-/tmp}/tsemu-build.XXXXXX")
trap 'rm -rf "$stage"' EXIT
for item in pyproject.toml setup.py README.md tsemu wire emulator cli shim supervisor; do
    cp -R "$source_dir/$item" "$stage/$item"
done
rm -f "$stage/tsemu/libtsemu-shim.so" "$stage/tsemu/tsemu-run"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +

# 3. The install: a venv of its own at PREFIX, the package built from the copy (the shim is
#    compiled by setup.py's build_ext).
say "creating $prefix"
"$python" -m venv "$prefix"
say "installing tsemu into $prefix"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "$stage"

# 4. Check it: the command runs, the shim was built and is a shared library (-I: the
#    installed package, not a tsemu/ in the current directory).
"$prefix/bin/tsemu" --help >/dev/null
shim=$("$prefix/bin/python" -I -c 'from tsemu.shim import shim_path; print(shim_path())')
case "$(head -c 4 "$shim" | od -An -c | tr -d ' ')" in
    177ELF) ;;
    *) say "the shim at $shim is not an ELF library"; exit 1 ;;
esac
ln -sf "$shim" "$prefix/libtsemu-shim.so"
# The seccomp supervisor, a static executable (built where libc6-dev's libc.a is installed).
supervisor=$(dirname "$shim")/tsemu-run
if [ -x "$supervisor" ]; then
    ln -sf "$supervisor" "$prefix/tsemu-run"
else
    say "note: tsemu-run (the seccomp supervisor) was not built: no static libc?"
fi

# 5. The extras: entry point, health check (C: it runs every second), example scenarios.
cp "$source_dir/docker/entrypoint.sh" "$prefix/bin/tsemu-entrypoint"
chmod 0755 "$prefix/bin/tsemu-entrypoint"
cc=$(command -v gcc || command -v cc)
"$cc" -O2 -s -o "$prefix/bin/tsemu-health" "$source_dir/docker/health.c"
mkdir -p "$prefix/share/tsemu"
cp -R "$source_dir/examples" "$prefix/share/tsemu/examples"

# 6. What the runtime does not need: the installers, and rich with its pygments and
#    markdown-it (13 MB; typer prints plain help without them, tsemu never imports them).
"$prefix/bin/python" -m pip uninstall --quiet --yes rich pygments markdown-it-py mdurl \
    >/dev/null 2>&1 || true
"$prefix/bin/tsemu" --help >/dev/null
"$prefix/bin/python" -m pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true
say "done: $prefix/bin/tsemu, shim $shim"

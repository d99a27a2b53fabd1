#!/bin/sh
# The image's entry point (installed as PREFIX/bin/tsemu-entrypoint by docker/build-steps.sh).
#
# 1. For `serve`, offers the LD_PRELOAD shim to client containers that share only the socket's
#    directory: a copy goes to $(dirname $TSEMU_SOCKET)/libtsemu-shim.so, replaced atomically
#    (a client that has the old one mapped keeps it). It is built against the image's glibc (Debian
#    bookworm, 2.36): clients need glibc 2.36 or newer, not musl.
# 2. Runs `tsemu ARGS...`, or ARGS as a command when its first word is a program on PATH
#    (`docker run -it IMAGE sh`).
set -eu

prefix=$(cd "$(dirname "$0")/.." && pwd)
socket=${TSEMU_SOCKET:-/run/tsemu/genl.sock}
directory=$(dirname "$socket")

offer_shim() {
    mkdir -p "$directory" 2>/dev/null || true
    if ! [ -w "$directory" ]; then
        echo "tsemu: note: $directory is not writable by uid $(id -u): the shim is not" \
             "offered there (and serve cannot bind $socket)" >&2
        return 0
    fi
    partial="$directory/.libtsemu-shim.so.$$"
    if cp "$prefix/libtsemu-shim.so" "$partial" && chmod 0644 "$partial"; then
        mv -f "$partial" "$directory/libtsemu-shim.so"
    else
        rm -f "$partial"
        echo "tsemu: note: could not copy the shim into $directory" >&2
    fi
}

if [ "${1:-}" = serve ] && [ -r "$prefix/libtsemu-shim.so" ]; then
    offer_shim
fi

if [ $# -gt 0 ] && command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec "$prefix/bin/tsemu" "$@"

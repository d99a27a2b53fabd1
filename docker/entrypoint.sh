#!/bin/sh
# The image's entry point (installed as PREFIX/bin/tsemu-entrypoint by docker/build-steps.sh).
#
# 1. For `serve`, offers the LD_PRELOAD shim to client containers that share only the socket's
#    directory: a copy goes to the socket's directory (`serve --socket PATH`, else
#    $TSEMU_SOCKET) as libtsemu-shim.so, replaced atomically (a client that has the old one
#    mapped keeps it). It is built against the image's glibc (Debian bookworm, 2.36): clients
#    need glibc 2.36 or newer, not musl. The seccomp supervisor goes there too, as tsemu-run:
#    a static executable that needs nothing from the client's image (Alpine, distroless,
#    scratch): `/run/tsemu/tsemu-run -- CLIENT` reaches Go and static clients as well (in a
#    container with --cap-add SYS_PTRACE: Docker's default seccomp profile refuses
#    pidfd_getfd otherwise). A
#    directory it cannot write is left to `serve`, which says in one line why it cannot use it.
# 2. Runs `tsemu ARGS...`, or ARGS as a command when its first word is a program on PATH
#    (`docker run -it IMAGE sh`).
set -eu

prefix=$(cd "$(dirname "$0")/.." && pwd)
socket=${TSEMU_SOCKET:-/run/tsemu/genl.sock}

if [ "${1:-}" = serve ]; then
    previous=
    for arg in "$@"; do
        case "$previous" in --socket|-s) socket=$arg ;; esac
        case "$arg" in --socket=*) socket=${arg#--socket=} ;; esac
        previous=$arg
    done
fi
directory=$(dirname "$socket")

# offer NAME MODE: copy $prefix/NAME into the socket's directory, replaced atomically.
offer() {
    mkdir -p "$directory" 2>/dev/null || return 0
    [ -w "$directory" ] || return 0
    partial="$directory/.$1.$$"
    if cp "$prefix/$1" "$partial" 2>/dev/null && chmod "$2" "$partial"; then
        mv -f "$partial" "$directory/$1"
    else
        rm -f "$partial"
        echo "tsemu: note: could not copy $1 into $directory" >&2
    fi
}

if [ "${1:-}" = serve ] && [ -r "$prefix/libtsemu-shim.so" ]; then
    offer libtsemu-shim.so 0644
fi
if [ "${1:-}" = serve ] && [ -x "$prefix/tsemu-run" ]; then
    offer tsemu-run 0755
fi

if [ $# -gt 0 ] && command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec "$prefix/bin/tsemu" "$@"

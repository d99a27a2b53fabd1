#!/bin/sh
# Make the image's base locally, for machines that reach no image registry: Debian bookworm
# (minbase) with python3 and python3-venv from the Debian mirror apt already uses, imported
# into the Docker engine as TAG (default tsemu-base:bookworm). Then build tsemu on it:
#
#   docker/make-base-image.sh [TAG]
#   docker build --build-arg PYTHON_IMAGE=tsemu-base:bookworm -t tsemu .
#
# Needs root (mmdebstrap's root mode), mmdebstrap and a running Docker engine. Does nothing
# when TAG already exists (FORCE=1 makes it again). MIRROR overrides the mirror (default:
# the first deb.debian.org-style URI in /etc/apt/sources.list{,.d}; else deb.debian.org).
# About 30 s; the image is about 160 MB (no manuals, no translations: path-exclude).
set -eu

tag=${1:-tsemu-base:bookworm}
say() { echo "make-base-image: $*" >&2; }

if [ "${FORCE:-}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    say "$tag exists"
    exit 0
fi
command -v mmdebstrap >/dev/null 2>&1 || { say "needs mmdebstrap (apt-get install mmdebstrap)"; exit 1; }

if [ -z "${MIRROR:-}" ]; then
    # deb822 (URIs:) or one-line (deb URL suite ...) sources; the first main Debian archive.
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
                 /etc/apt/sources.list.d/*.list 2>/dev/null \
             | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
                      -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p' \
             | grep -v -e security -e '^$' | head -n 1)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tsemu-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "debootstrapping bookworm (minbase, python3, python3-venv) from $MIRROR"
# The host's CA bundle replaces the image's, so that pip inside the build reaches an index
# through a TLS-inspecting proxy the host trusts (Debian's bundle would not know its root).
bundle=/etc/ssl/certs/ca-certificates.crt
hook='true'
[ -r "$bundle" ] && hook="cp $bundle \"\$1$bundle\""
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="$hook" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$work/rootfs.tar" "$MIRROR"
say "importing as $tag"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$tag" >/dev/null
say "done: $tag ($(docker image inspect --format '{{.Size}}' "$tag") bytes)"

# tsemu: the Linux taskstats interface, emulated in user space, with its LD_PRELOAD shim.
#
#   docker build -t tsemu .
#   docker run -d --name tsemu -v tsemu-run:/run/tsemu tsemu
#   docker run --rm -v tsemu-run:/run/tsemu tsemu ctl ps
#   docker run --rm -v tsemu-run:/run/tsemu tsemu get --pid 733
#
# The server listens on $TSEMU_SOCKET (/run/tsemu/genl.sock: a volume; share it, and only it,
# with client containers, at any path: docker/compose.example.yml). When it starts, the entry
# point also copies the shim there, as libtsemu-shim.so: a client container (glibc 2.36 or
# newer) runs its netlink program with LD_PRELOAD=<dir>/libtsemu-shim.so and
# TSEMU_SOCKET=<dir>/genl.sock, or uses this image's `tsemu run -- PROGRAM`. A client on the
# host uses the volume's host path (or a bind mount's) the same way: any path works.
#
# Ready: the line `tsemu: listening on SOCKET` on stderr (for tools that wait on logs), and
# the health check (healthy about a second after the start: it runs every second, a 1 ms C
# probe of the control socket, docker/health.c; Docker 20.10 has no --start-interval). Docker's
# own side of each check costs about 55 ms of CPU: for a long-lived container, run it with
# --health-interval=30s (Docker 25+: --health-start-interval=1s --health-interval=30s).
#
# Base image: PYTHON_IMAGE, any Debian bookworm-like image with python3 (3.11+) and its venv
# module (python:3.11-slim-bookworm by default). From a mirror or an internal registry:
# `docker build --build-arg PYTHON_IMAGE=registry.example/python:3.11-slim-bookworm .`; with
# no registry at all, docker/make-base-image.sh makes one from the Debian mirror apt uses
# (`make image`). pip in the build takes PIP_INDEX_URL / PIP_EXTRA_INDEX_URL build args, and
# the base image's /etc/ssl/certs/ca-certificates.crt as its CA bundle (pip's `cert`).
#
# Non-root: the image has a `tsemu` user (uid 10001 unless --build-arg TSEMU_UID=N) that owns
# /run/tsemu. Run as it with `docker run --user tsemu ...`, or make it the default with
# `docker build --build-arg TSEMU_USER=tsemu .`. A bind-mounted directory must then be writable
# by that uid, and a volume that a root container used first has root's files in it. Who
# counts as privileged (CAP_NET_ADMIN) for TASKSTATS_CMD_GET is the server's `--admin` policy,
# not the container's user: e.g. `docker run ... tsemu serve --admin all`.
#
# The socket's directory is a volume shared with client containers on purpose, owned by the
# `tsemu` user: TSEMU_SHARED_DIR=1 (serve --shared-dir) lets a root server use it.
#
# The build steps are docker/build-steps.sh, which CI runs outside Docker (tests/test_docker.py).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: compiler, venv, package, shim --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN sh /src/docker/build-steps.sh /src /opt/tsemu \
    && cc -O2 -o /opt/getdelays /src/tests/clients/getdelays.c

# -- getdelays: a plain C taskstats client (tests/clients/getdelays.c) in an image without
#    tsemu, for docker/compose.example.yml (`--target getdelays`); it reaches the server
#    through the shim the server offers in the shared volume
FROM ${PYTHON_IMAGE} AS getdelays
COPY --from=build /opt/getdelays /usr/local/bin/getdelays

# -- runtime: the venv alone, no compiler -------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG TSEMU_USER=root
ARG TSEMU_UID=10001

COPY --from=build /opt/tsemu /opt/tsemu
RUN groupadd --system --gid "${TSEMU_UID}" tsemu \
    && useradd --system --uid "${TSEMU_UID}" --gid tsemu --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin tsemu \
    && mkdir -p /run/tsemu \
    && chown tsemu:tsemu /run/tsemu \
    && chmod 0755 /run/tsemu

ENV PATH=/opt/tsemu/bin:$PATH \
    TSEMU_SOCKET=/run/tsemu/genl.sock \
    TSEMU_SHARED_DIR=1 \
    PYTHONUNBUFFERED=1

VOLUME /run/tsemu
USER ${TSEMU_USER}
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=1s --timeout=3s --retries=3 CMD ["/opt/tsemu/bin/tsemu-health"]

ENTRYPOINT ["/opt/tsemu/bin/tsemu-entrypoint"]
CMD ["serve"]

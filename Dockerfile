# tsemu: the Linux taskstats interface, emulated in user space, with its LD_PRELOAD shim.
#
#   docker build -t tsemu .
#   docker run -d --name tsemu -v tsemu-run:/run/tsemu tsemu
#   docker run --rm -v tsemu-run:/run/tsemu tsemu ctl ps
#   docker run --rm -v tsemu-run:/run/tsemu tsemu get --pid 733
#
# The server listens on /run/tsemu/genl.sock (a volume: share it, and only it, with client
# containers; docker/compose.example.yml). When it starts, the entry point also copies the shim
# there, as /run/tsemu/libtsemu-shim.so: a client container (glibc 2.36 or newer) runs its
# netlink program with LD_PRELOAD=/run/tsemu/libtsemu-shim.so and
# TSEMU_SOCKET=/run/tsemu/genl.sock, or uses this image's `tsemu run -- PROGRAM`.
#
# Non-root: the image has a `tsemu` user (uid 10001 unless --build-arg TSEMU_UID=N) that owns
# /run/tsemu. Run as it with `docker run --user tsemu ...`, or make it the default with
# `docker build --build-arg TSEMU_USER=tsemu .`. A bind-mounted directory must then be writable
# by that uid. Who counts as privileged (CAP_NET_ADMIN) for TASKSTATS_CMD_GET is the server's
# `--admin` policy, not the container's user: e.g. `docker run ... tsemu serve --admin all`.
#
# The build steps are docker/build-steps.sh, which CI runs outside Docker (tests/test_docker.py).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: compiler, venv, package, shim --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN sh /src/docker/build-steps.sh /src /opt/tsemu

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
    PYTHONUNBUFFERED=1

VOLUME /run/tsemu
USER ${TSEMU_USER}
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD tsemu families --socket /run/tsemu/genl.sock >/dev/null || exit 1

ENTRYPOINT ["/opt/tsemu/bin/tsemu-entrypoint"]
CMD ["serve", "--socket", "/run/tsemu/genl.sock"]

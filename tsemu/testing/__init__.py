"""Helpers for test suites that use tsemu as a dependency: `image` builds (or finds) tsemu's
container image from a source tree, `container` runs it through testcontainers-python (the
optional extra `tsemu[containers]`)."""

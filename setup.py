"""Builds tsemu's LD_PRELOAD shim (shim/*.c) during a plain `pip install` / `pip install -e .`.

Everything else about the package is declared in pyproject.toml; this file only adds the C
library. It is compiled as a setuptools extension so that pip's ordinary build runs the C
compiler, but it is not a Python module: it is loaded with LD_PRELOAD, never imported, and it
is named `tsemu/libtsemu-shim.so` (no Python ABI tag) so that `tsemu.shim.shim_path()` finds
it under one name in both editable and regular installs.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SHIM_MODULE = "tsemu.libtsemu-shim"
SHIM_FILE = "libtsemu-shim.so"
SOURCES = sorted(os.path.join("shim", name) for name in os.listdir("shim")
                 if name.endswith(".c"))


class BuildShim(build_ext):  # type: ignore[misc]  # setuptools is untyped here
    """build_ext for a plain shared library: no Python ABI tag, no PyInit symbol."""

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the full dotted name and, while building, with its last part alone.
        parts = fullname.split(".")
        if parts[-1] == SHIM_MODULE.rsplit(".", 1)[1]:
            return os.path.join(*parts[:-1], SHIM_FILE)
        return str(super().get_ext_filename(fullname))

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return list(ext.export_symbols or [])


shim = Extension(
    SHIM_MODULE,
    sources=SOURCES,
    depends=sorted(os.path.join("shim", n) for n in os.listdir("shim") if n.endswith(".h")),
    # The shim defines recv(), read()...: fortified inline wrappers must not be in its way.
    extra_compile_args=["-U_FORTIFY_SOURCE", "-std=gnu11", "-Wall", "-Wextra",
                        "-fvisibility=default"],
    libraries=["dl", "pthread"],
)

setup(ext_modules=[shim], cmdclass={"build_ext": BuildShim})

"""Builds tsemu's LD_PRELOAD shim (shim/*.c) and its seccomp supervisor (supervisor/*.c, the
static executable `tsemu-run`) during a plain `pip install` / `pip install -e .`.

Everything else about the package is declared in pyproject.toml; this file only adds the C
library. It is compiled as a setuptools extension so that pip's ordinary build runs the C
compiler, but it is not a Python module: it is loaded with LD_PRELOAD, never imported, and it
is named `tsemu/libtsemu-shim.so` (no Python ABI tag) so that `tsemu.shim.shim_path()` finds
it under one name in both editable and regular installs.

`tsemu-run` is linked `-static` so that it runs in client images with neither Python nor glibc;
it shares the shim's netlink rules and /proc rules at source level (SHARED_RULES: addressing,
send and receive, naming, options, the caller's memory, the /proc routes are compiled into it).
It is put beside the shim (`tsemu/tsemu-run`); `tsemu.supervisor.supervisor_path()` finds it.
Where no static libc is installed (libc6-dev has it on Debian) the build says so and goes on
without it: `tsemu run` then refuses the clients only the supervisor reaches.
"""

from __future__ import annotations

import os
import sys

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

    def run(self) -> None:
        super().run()
        self.build_supervisor()

    def build_supervisor(self) -> None:
        """Compile and link `tsemu-run` next to the shim, statically."""
        target = os.path.join(os.path.dirname(self.get_ext_fullpath(SHIM_MODULE)),
                              SUPERVISOR_FILE)
        if not self.force and os.path.exists(target) and all(
                os.path.getmtime(src) <= os.path.getmtime(target)
                for src in SUPERVISOR_SOURCES + SUPERVISOR_DEPENDS):
            return
        objects_dir = os.path.join(self.build_temp, "supervisor")
        try:
            objects = self.compiler.compile(
                SUPERVISOR_SOURCES, output_dir=objects_dir,
                extra_postargs=["-std=gnu11", "-O2", "-Wall", "-Wextra"],
                depends=SUPERVISOR_DEPENDS)
            self.compiler.link_executable(objects, SUPERVISOR_FILE,
                                          output_dir=os.path.dirname(target) or ".",
                                          extra_postargs=["-static"])
        except Exception as exc:  # no static libc: the shim still works, say why not this
            print(f"warning: tsemu-run (the seccomp supervisor) was not built: {exc}",
                  file=sys.stderr)


SUPERVISOR_FILE = "tsemu-run"
# The shim's rule files: one implementation of the netlink socket rules and the /proc rules
# for both ways in (supervisor/glue.c gives them libc's functions as the "real" ones).
SHARED_RULES = ["addr.c", "cmsg.c", "io.c", "naming.c", "options.c", "procroute.c", "usermem.c"]
SUPERVISOR_SOURCES = sorted(os.path.join("supervisor", name) for name in os.listdir("supervisor")
                            if name.endswith(".c")) + [os.path.join("shim", name)
                                                          for name in SHARED_RULES]
SUPERVISOR_DEPENDS = sorted(os.path.join("supervisor", n) for n in os.listdir("supervisor")
                            if n.endswith(".h")) + [os.path.join("shim", "shim.h"),
                                                    os.path.join("shim", "procroute.h")]

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

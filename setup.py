"""Install-time build of the C int8 kernels (everything else is in pyproject.toml).

``edge_sdfa/int8/c_kernels.c`` is compiled by setuptools' ``build_ext`` with the system C
compiler into ``edge_sdfa/int8/_c_kernels<EXT_SUFFIX>``, a plain shared library that
``edge_sdfa.int8.c_kernels`` loads with ctypes (no Python C API, no PyInit). ``CC``, ``CFLAGS``,
``LDSHARED`` and ``LDFLAGS`` are honoured as for any extension, so ``CC=aarch64-linux-gnu-gcc``
cross-builds. Flags never include ``-march=native``; the C file picks vector code per CPU itself.
The first flag set that builds wins (then without the x86 clones);
if none does, or there is no compiler, the install still succeeds and the numpy kernel set runs.
"""
from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BASE = ["-O3", "-std=gnu99", "-fno-strict-aliasing", "-pthread"]
FLAG_SETS = (
    ([], ["-pthread"]),
    (["-DESD_NO_CLONES"], ["-pthread"]),   # a libc without ifunc (x86 clones)
)


class OptionalCKernels(build_ext):
    """build_ext that tries FLAG_SETS in turn and only warns when the C kernels cannot be built."""

    def build_extension(self, ext):
        if os.environ.get("EDGE_SDFA_NO_C_KERNELS"):
            self.warn("EDGE_SDFA_NO_C_KERNELS is set: the C int8 kernels are not built (numpy set)")
            return
        errors = []
        for compile_args, link_args in FLAG_SETS:
            ext.extra_compile_args = BASE + compile_args
            ext.extra_link_args = link_args
            try:
                super().build_extension(ext)
                return
            except Exception as exc:  # noqa: BLE001 - CompileError, LinkError, no compiler: never fail the install
                errors.append(f"{' '.join(compile_args) or 'no extra flags'}: {exc}")
        self.warn("the C int8 kernels could not be built; edge-sdfa will use the numpy kernel set ("
                  + "; ".join(errors) + ")")

    def get_export_symbols(self, ext):
        return []  # a ctypes library, not a Python module: there is no PyInit_ to export


setup(
    ext_modules=[Extension("edge_sdfa.int8._c_kernels", ["edge_sdfa/int8/c_kernels.c"], optional=True)],
    cmdclass={"build_ext": OptionalCKernels},
)

"""The optional native media engine (gateway/media/_native.pyx, issue 12).

Everything else is in pyproject.toml. The extension calls libopus and libsrtp2
(Debian: libopus-dev, libsrtp2-dev; `make deps` installs them). It is optional:
without Cython, a C compiler or those headers the install still succeeds and the
daemon runs the pure-Python engine (media.engine: auto), saying so in one line.
"""

from __future__ import annotations

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a missing compiler, header or library
    leaves the Python engine (one line on stderr says why)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(f"warning: native media engine not built ({exc})", file=sys.stderr)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as exc:
            print(f"warning: native media engine not built ({exc})", file=sys.stderr)


def extensions() -> list[object]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython missing: native media engine not built", file=sys.stderr)
        return []
    from setuptools import Extension

    ext = Extension(
        "gateway.media._native",
        ["gateway/media/_native.pyx"],
        libraries=["srtp2", "opus"],
        extra_compile_args=["-O2"],
        optional=True,
    )
    try:
        return list(cythonize([ext], quiet=True, compiler_directives={"language_level": 3}))
    except Exception as exc:
        print(f"warning: native media engine not generated ({exc})", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

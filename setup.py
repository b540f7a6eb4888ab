"""Builds the native engine (a C extension needing only gcc and the Python headers).

Everything else about the package is in pyproject.toml.
"""

import os

from setuptools import Extension, setup

SOURCES = "src/enrichproxy/engine/_native_src"
# -ffp-contract=off: no fused multiply-add, so sums round exactly as Python's do.
# ENRICHPROXY_NATIVE_CFLAGS adds flags for a special build (AddressSanitizer in the tests).
FLAGS = ["-O2", "-std=gnu11", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall"]
FLAGS += os.environ.get("ENRICHPROXY_NATIVE_CFLAGS", "").split()

setup(
    ext_modules=[
        Extension(
            "enrichproxy.engine._native",
            sources=[
                f"{SOURCES}/{name}.c" for name in ("util", "wire", "aggregate", "plan", "keys", "core")
            ],
            depends=[f"{SOURCES}/{name}.h" for name in ("common", "wire", "aggregate", "plan", "keys")],
            extra_compile_args=FLAGS,
            extra_link_args=os.environ.get("ENRICHPROXY_NATIVE_LDFLAGS", "").split(),
        )
    ]
)

"""Build filterd: the modules of the per-event path are compiled with mypyc.

Which modules, and why: filterd/native.py. FILTERD__PURE_PYTHON=1 builds
nothing, for a machine without a C compiler: filterd then runs those modules
as plain Python, with the same decisions, slower per event.
"""

import os
import runpy

from setuptools import setup


def ext_modules() -> list:
    if os.environ.get("FILTERD__PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify

    sources = runpy.run_path("filterd/native.py")["SOURCES"]
    # One shared library (filterd/_native__mypyc*.so) for the group, so calls
    # between the compiled modules are direct C calls.
    return mypycify(list(sources), opt_level="3", group_name="filterd._native")


setup(ext_modules=ext_modules())

"""Build filterd: the modules of the per-event path are compiled with mypyc.

Which modules, and why: filterd/native.py. Beside them, one C extension:
filterd/_table.c, the compact per-recipient table (filterd/table.py).
FILTERD__PURE_PYTHON=1 builds nothing, for a machine without a C compiler:
filterd then runs those modules as plain Python, with the same decisions,
slower per event, and the table's pure-Python twin, with more memory.
"""

import os
import runpy

from setuptools import Extension, setup


def ext_modules() -> list:
    if os.environ.get("FILTERD__PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify

    sources = runpy.run_path("filterd/native.py")["SOURCES"]
    # One shared library (filterd/_native__mypyc*.so) for the group, so calls
    # between the compiled modules are direct C calls.
    table = Extension(
        "filterd._table", ["filterd/_table.c"], extra_compile_args=["-O3", "-std=c11"]
    )
    return [*mypycify(list(sources), opt_level="3", group_name="filterd._native"), table]


setup(ext_modules=ext_modules())

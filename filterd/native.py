"""Which of the per-event modules run compiled, and whether a build went stale.

The modules of the per-event path (:data:`SOURCES`) are ordinary, fully typed
Python. ``setup.py`` compiles them to C extensions with mypyc when filterd is
installed (wheel, ``pip install``, ``make install``); Python then imports the
extension instead of the source. The code, and so every decision, is the same
either way (the test suite runs against the compiled build and compares it with
the source, ``tests/test_native.py``); the compiled build is about 1.5x faster
per event (``make bench-decide``). ``FILTERD__PURE_PYTHON=1`` at install time
builds nothing, for machines without a C compiler.

``python -m filterd.native`` prints what runs and exits 1 when a compiled
module is older than its source: in a source checkout, an edit is not in force
until ``make native`` (which ``make test`` runs) compiles it again. Outside make
and pytest nothing stops such a run, so ``filterd run`` says it at start-up: a
warning naming the stale modules (:func:`stale_warning`), and the ``hot_path``
label of ``filterd_build_info`` ends in ``-stale`` (:func:`build_label`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXTENSIONS", "SOURCES", "Module", "build_label", "extensions", "hot_path", "modules",
    "stale_warning",
]  # fmt: skip

#: The compiled modules, as paths from the repository root (setup.py reads this).
SOURCES = (
    "filterd/numbers.py",
    "filterd/prefilter.py",
    "filterd/router.py",
    "filterd/pipeline.py",
    "filterd/records.py",
    "filterd/markers.py",
    "filterd/limits.py",
    "filterd/snapshot/store.py",
)
#: C extensions built beside them (setup.py), each with its pure-Python fallback.
EXTENSIONS = ("filterd/_table.c",)


@dataclass(frozen=True, slots=True)
class Module:
    """One module of :data:`SOURCES` as this interpreter imported it."""

    name: str
    file: Path
    compiled: bool
    #: The source's file name (``table.py``; ``_table.c`` for a C extension).
    source: str = ""

    @property
    def stale(self) -> bool:
        """Compiled in a source checkout, and its source was modified after the build.

        Only a checkout (``setup.py`` beside the package) is checked: an installed
        wheel's files carry the archive's timestamps, which say nothing about
        which was built from which.
        """
        if not self.compiled or not _in_checkout(self.file):
            return False
        source = self.file.parent / (self.source or self.name.rpartition(".")[2] + ".py")
        try:
            return source.stat().st_mtime > self.file.stat().st_mtime
        except OSError:
            return False


def _in_checkout(file: Path) -> bool:
    package = next((p for p in file.parents if p.name == "filterd"), None)
    return package is not None and (package.parent / "setup.py").is_file()


def modules() -> list[Module]:
    """Each module of :data:`SOURCES`, imported, and whether it is the compiled one."""
    found = []
    package = Path(__file__).resolve().parent
    for source in SOURCES:
        name = source.removesuffix(".py").replace("/", ".")
        # The directory from the module's name: a compiled module imported by another
        # one of the group during its initialization gets a wrong __file__ (mypyc).
        file = (
            package.joinpath(*name.split(".")[1:-1])
            / Path(importlib.import_module(name).__file__ or "").name
        )
        compiled = file.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        found.append(Module(name, file, compiled))
    return found


def extensions() -> list[Module]:
    """Each C extension of :data:`EXTENSIONS`, and whether it is built (else its
    pure-Python twin runs). Not part of :func:`hot_path`: the decisions are the same
    either way, only memory and speed differ."""
    package = Path(__file__).resolve().parent
    found = []
    for source in EXTENSIONS:
        name = source.removesuffix(".c").replace("/", ".")
        try:
            file = Path(importlib.import_module(name).__file__ or "")
        except ImportError:  # not built: its pure-Python twin runs
            found.append(Module(name, package / Path(source).name, False, Path(source).name))
        else:
            found.append(Module(name, file, True, Path(source).name))
    return found


def hot_path() -> str:
    """``compiled``, ``interpreted``, or ``partly compiled`` (a broken build)."""
    return _hot_path(modules())


def _hot_path(found: list[Module]) -> str:
    compiled = [m.compiled for m in found]
    if all(compiled):
        return "compiled"
    return "partly compiled" if any(compiled) else "interpreted"


def build_label() -> str:
    """:func:`hot_path`, with ``-stale`` appended when a compiled module is stale."""
    found = modules()
    label = _hot_path(found)
    return f"{label}-stale" if any(m.stale for m in found + extensions()) else label


def stale_warning() -> str | None:
    """The start-up warning when compiled modules are older than their sources."""
    stale = [m.name for m in modules() + extensions() if m.stale]
    if not stale:
        return None
    return (
        f"compiled modules older than their source: {', '.join(stale)}; the running code "
        "is the old build, not the edited source (run `make native`)"
    )


def main() -> int:
    found = modules()
    built = extensions()
    for m in found + built:
        state = "compiled" if m.compiled else "interpreted"
        print(f"{m.name:24} {state:12} {m.file}{'  STALE: run make native' if m.stale else ''}")
    print(f"hot path: {hot_path()}")
    # A compiled build without its C extensions is as broken as a partly compiled one.
    half = hot_path() == "compiled" and not all(m.compiled for m in built)
    if half:
        print("C extensions missing from a compiled build: run make native")
    stale = any(m.stale for m in found + built)
    return 1 if stale or half or hot_path() == "partly compiled" else 0


if __name__ == "__main__":
    sys.exit(main())

"""The compiled hot path (setup.py, filterd/native.py) against the same code interpreted.

The per-event modules are compiled with mypyc, which keeps Python's semantics
for typed code but not for everything (a wrong runtime type raises TypeError
where CPython would carry on). So the suite, which runs against the compiled
build, also decides a large mixed corpus twice: here, compiled, and in a child
interpreter that imports the very same sources as plain Python. Every outcome
must match, record by record, and so must the number sets the snapshot loader
builds, and the producer batches the pipeline writes (filterd/records.py), byte for
byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from filterd import native

REPO = Path(__file__).resolve().parent.parent

# Runs in both interpreters; prints one JSON document.
SCRIPT = r"""
import collections, hashlib, json, sys
from array import array
from pathlib import Path

import orjson

from filterd import native
from filterd.loadgen import write_dataset
from filterd.loadgen.events import iter_labelled_events
from filterd.numbers import normalize
from filterd.pipeline import HeaderCache, OutputTopics, decide_partition
from filterd.records import RecordBatch
from filterd.errors import InvalidNumber
from filterd.router import Decider, Policy
from filterd.snapshot import load_snapshot
from filterd.snapshot.build import build_snapshot
from filterd.snapshot.store import SortedNumbers

work = Path(sys.argv[1])
ds = write_dataset(work / "data", senders=40, recipients=20_000, consents=60_000, seed=5)
build_snapshot(
    work / "snap", work / "data" / "consents.csv.gz", work / "data" / "optouts.csv.gz",
    work / "data" / "dnd.csv.gz",
)
snapshot = load_snapshot(work / "snap")
values = [e.value for e in iter_labelled_events(ds, 30_000, seed=9, bad_rate=0.2, ts_ms=0)]
# Hostile values on top of the generator's bad kinds.
for raw in (b"", b"null", b"[]", b"{}", b"\xff\xfe", b'{"id":1}', b"1e999", b'"x"'):
    values.append(raw)
for recipient in ("+86 138-1234-5678", "(0)13812345678", "\uff11\uff13\uff18", "8613812345678x",
                  "+", "00", "0", "+0086138", "1" * 40, "+861381234567\u0662", " 13812345678 "):
    for sender in ("106900000001", " 106900000001 ", "", "nobody"):
        for extra in ({}, {"category": "transactional"}, {"category": 7}, {"ts": True},
                      {"ts": 1.5}, {"text": None}, {"text": ["x"]}):
            event = {"id": "m", "sender": sender, "recipient": recipient, **extra}
            values.append(orjson.dumps(event))
decider = Decider(snapshot, Policy(max_event_bytes=4096))
outcomes = [decider.decide(v).reason for v in values]
# The output path: the same records decided into producer batches, byte for byte.
R = collections.namedtuple("R", "offset timestamp key value")
records = [R(1000 + i, 7 * i, b"k%d" % i if i % 3 else None, v) for i, v in enumerate(values)]
topics = OutputTopics("d", "b", "i", {"d": 2, "b": 4, "i": 1})
out = decide_partition(
    decider, HeaderCache("v1"), "in", 3, records, topics, lambda: RecordBatch(65536, 0, True)
)
batches = [
    [t, p, b.record_count(), hashlib.sha256(b._build()).hexdigest()] for t, p, b in out.batches
]
numbers = []
for r in ("13812345678", "+8613812345678", "008613812345678", "(0)138 1234 5678",
          "+1 (415) 555-0100", "12", "+" + "9" * 16, "٣٣٣٣٣٣٣٣٣"):
    try:
        numbers.append(normalize(r))
    except InvalidNumber as exc:
        numbers.append(str(exc))
sets = {}
for sender, entry in sorted(snapshot.senders.items()):
    c = entry.consents
    sets[sender] = [type(c).__name__, len(c), sum(c) % 1_000_003, len(entry.optouts)]
layouts = []
# 16-, 32- and 64-bit layouts: a dense cluster, a country's range, several countries.
for values in ({8613800000000 + 7 * i * i for i in range(5_000)},
               {8613000000000 + 7_000_003 * i for i in range(1_000)},
               {10**7 + 3, 10**14 + 7, 5 * 10**14 + 3, 10**15 - 1}):
    lows = array("Q", sorted(values))
    sn = SortedNumbers.from_sorted(lows)
    probes = [v + d for v in lows for d in (-1, 0, 1)] + [0, 2**64, -5]
    layouts.append([repr(sn), list(sn) == list(lows), [p in sn for p in probes], sn[0], sn[-1]])
print(json.dumps({
    "hot_path": native.hot_path(), "outcomes": outcomes, "numbers": numbers, "sets": sets,
    "sorted": layouts, "batches": batches,
}))
"""


def _run(tmp: Path, env: dict[str, str]) -> dict[str, object]:
    tmp.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp)], capture_output=True, text=True, env=env,
        cwd=tmp, check=False, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.slow
def test_compiled_and_interpreted_decide_alike(tmp_path: Path) -> None:
    if native.hot_path() != "compiled":
        pytest.skip(f"hot path is {native.hot_path()}: nothing to compare (make native)")
    # The same sources without their compiled extensions, first on the path.
    pure = tmp_path / "pure"
    shutil.copytree(REPO / "filterd", pure / "filterd", ignore=shutil.ignore_patterns("*.so"))
    env = {**os.environ, "PYTHONPATH": str(pure)}
    interpreted = _run(tmp_path / "interpreted", env)
    compiled = _run(tmp_path / "compiled", {**os.environ, "PYTHONPATH": ""})
    assert interpreted["hot_path"] == "interpreted"
    assert compiled["hot_path"] == "compiled"
    a, b = compiled.pop("outcomes"), interpreted.pop("outcomes")
    assert isinstance(a, list)
    assert isinstance(b, list)
    assert len(a) == len(b) > 30_000
    mismatches = [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    assert not mismatches, f"{len(mismatches)} records decided differently: {mismatches[:5]}"
    assert len(set(a)) >= 10, f"the corpus must reach most reasons, got {sorted(set(a))}"
    compiled.pop("hot_path"), interpreted.pop("hot_path")
    assert len(compiled["batches"]) > 3  # type: ignore[arg-type]
    assert compiled == interpreted


def test_hot_path_is_what_the_build_promised() -> None:
    """`make test` says which build it expects; a half-built tree never passes."""
    found = native.modules()
    assert [m.name for m in found] == [
        s.removesuffix(".py").replace("/", ".") for s in native.SOURCES
    ]
    assert native.hot_path() != "partly compiled", found
    expected = os.environ.get("FILTERD__EXPECT_HOT_PATH")
    if expected:
        assert native.hot_path() == expected
    assert not [m.name for m in found if m.stale], "stale compiled modules: run make native"
    built = native.extensions()
    assert [m.name for m in built] == [
        s.removesuffix(".c").replace("/", ".") for s in native.EXTENSIONS
    ]
    if native.hot_path() == "compiled":
        assert all(m.compiled and not m.stale for m in built), built


@pytest.mark.parametrize("checkout", [True, False])
def test_staleness_is_seen_in_a_checkout(tmp_path: Path, checkout: bool) -> None:
    package = tmp_path / "filterd"
    package.mkdir()
    if checkout:
        (tmp_path / "setup.py").write_text("")
    so = package / "router.cpython-311-x86_64-linux-gnu.so"
    py = package / "router.py"
    so.write_bytes(b"")
    py.write_text("")
    os.utime(so, (1_000, 1_000))
    os.utime(py, (2_000, 2_000))
    # An installed wheel's timestamps are the archive's: only a checkout is judged.
    assert native.Module("filterd.router", so, compiled=True).stale is checkout
    assert not native.Module("filterd.router", py, compiled=False).stale
    os.utime(so, (3_000, 3_000))
    assert not native.Module("filterd.router", so, compiled=True).stale


def _stale_build(tmp_path: Path) -> list[native.Module]:
    """Every module compiled, filterd.router older than its source (in a checkout)."""
    (tmp_path / "setup.py").write_text("")
    package = tmp_path / "filterd"
    package.mkdir()
    found = []
    for m in native.modules():
        short = m.name.rpartition(".")[2]
        so, py = package / f"{short}.cpython-311-x86_64-linux-gnu.so", package / f"{short}.py"
        so.write_bytes(b"")
        py.write_text("")
        os.utime(so, (1_000, 1_000))
        os.utime(py, (2_000 if short == "router" else 500,) * 2)
        found.append(native.Module(m.name, so, compiled=True))
    return found


def test_a_stale_build_is_said_at_start_up_and_in_build_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import contextlib
    import logging

    from prometheus_client import CollectorRegistry

    from filterd import __version__
    from filterd.config import load_config
    from filterd.metrics import Metrics
    from filterd.service import Service

    assert native.stale_warning() is None  # this tree: fresh (make native ran)
    stale = _stale_build(tmp_path)
    monkeypatch.setattr(native, "modules", lambda: list(stale))
    assert native.hot_path() == "compiled"
    assert native.build_label() == "compiled-stale"
    registry = CollectorRegistry()
    Metrics(registry)
    labels = {"version": __version__, "hot_path": "compiled-stale"}
    assert registry.get_sample_value("filterd_build_info", labels) == 1

    env = {"FILTERD_METRICS_ENABLED": "false", "FILTERD_SNAPSHOT_ROOT": str(tmp_path / "none")}
    service = Service(load_config(None, env=env))
    service.should_exit = True  # no snapshot, no broker: start-up stops after its checks

    async def start() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await service.startup(stack)

    with caplog.at_level(logging.WARNING, logger="filterd.service"):
        asyncio.run(start())
    (line,) = [r.getMessage() for r in caplog.records if "older than their source" in r.message]
    assert "filterd.router" in line
    assert "filterd.numbers" not in line

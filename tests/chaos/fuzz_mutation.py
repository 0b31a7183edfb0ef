"""A long mutation run over the decision path: ``make fuzz``.

Starts from a corpus of seeded events (every rule and every invalid reason of
docs/contract.md) and mutates them for ``--seconds``: byte flips, inserts, deletes,
splices, and JSON-aware edits (a field dropped, retyped, or its number rewritten
in another form). Every input is decided by the router and checked:

- the decision returns, with one of the three routes and a reason of docs/contract.md
  that belongs to that route, and never ``internal-error`` (a bug was hit);
- it equals the decision of the fault suite's independent reference model.

Two engines: ``atheris`` (coverage-guided libFuzzer, when installed: the
``fuzz`` extra) and ``builtin`` (the mutator here, no dependency). ``auto``
takes atheris when it imports. Writes ``benchmarks/results/fuzz-mutation.json``
and exits 1 on any finding.

    python -m tests.chaos.fuzz_mutation --seconds 300 [--engine builtin|atheris|auto]
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.chaos import data as fl
from tests.support import reference as ref

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
MAX_BYTES = 2_048  # small, so that the oversized boundary is reached by mutation


def make_corpus(data: fl.ConsentData, size: int, seed: int) -> list[bytes]:
    corpus = [v for _, _, v in fl.iter_events(size, "fz", data, seed)]
    # The seeded oversized events are far past MAX_BYTES; add some at the boundary.
    head = b'{"id":"b","sender":"x","recipient":"13800000001","text":"'
    for size_ in (MAX_BYTES - 1, MAX_BYTES, MAX_BYTES + 1):
        corpus.append(head + b"y" * (size_ - len(head) - 2) + b'"}')
    return corpus


_INTERESTING = (b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b"\x00", b"\xff", b"0", b"-")
_NUMBER_FORMS: tuple[Callable[[str], str], ...] = (
    lambda d: "+" + d,
    lambda d: "00" + d,
    lambda d: d[2:],
    lambda d: "0" + d[2:],
    lambda d: " ".join(d),
    lambda d: "+" + d + "0" * 5,
    lambda d: "(" + d[:3] + ")" + d[3:],
    lambda d: d.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),
    lambda d: d.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
    lambda d: "\t" + d + "\n",
    lambda d: "+" + d[:5],
)
_WRONG: tuple[object, ...] = (None, True, 0, -1, 2**70, 1.5, "", " ", [], {}, ["x"], {"a": 1})


def _dumps(value: object) -> bytes:
    # The stdlib writes integers past 64 bits, which orjson refuses to.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


class Mutator:
    """Byte-level and JSON-aware mutations, reproducible from one seed."""

    def __init__(self, corpus: list[bytes], rng: random.Random) -> None:
        self.corpus = corpus
        self.rng = rng

    def __call__(self, value: bytes) -> bytes:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(self._ops)(self, value)
        return value

    def _flip(self, value: bytes) -> bytes:
        if not value:
            return value
        raw = bytearray(value)
        pos = self.rng.randrange(len(raw))
        raw[pos] ^= 1 << self.rng.randrange(8)
        return bytes(raw)

    def _insert(self, value: bytes) -> bytes:
        pos = self.rng.randint(0, len(value))
        if self.rng.random() < 0.5:
            piece = self.rng.choice(_INTERESTING)
        else:
            piece = self.rng.randbytes(self.rng.randint(1, 8))
        return value[:pos] + piece + value[pos:]

    def _delete(self, value: bytes) -> bytes:
        if not value:
            return value
        start = self.rng.randrange(len(value))
        return value[:start] + value[start + self.rng.randint(1, 16) :]

    def _repeat(self, value: bytes) -> bytes:
        if not value:
            return value
        start = self.rng.randrange(len(value))
        piece = value[start : start + self.rng.randint(1, 64)]
        return value[:start] + piece * self.rng.randint(2, 40) + value[start:]

    def _splice(self, value: bytes) -> bytes:
        other = self.rng.choice(self.corpus)
        return value[: self.rng.randint(0, len(value))] + other[self.rng.randint(0, len(other)) :]

    def _json(self, value: bytes) -> bytes:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if not isinstance(event, dict):
            return _dumps({"id": "w", "sender": "s", "recipient": event})
        rng = self.rng
        name = rng.choice(["id", "sender", "recipient", "category", "text", "ts", "extra"])
        roll = rng.random()
        if roll < 0.2:
            event.pop(name, None)
        elif roll < 0.45:
            event[name] = rng.choice(_WRONG)
        elif roll < 0.8 and isinstance(event.get("recipient"), str):
            digits = "".join(c for c in event["recipient"] if c.isascii() and c.isdigit())
            if len(digits) > 4:
                event["recipient"] = rng.choice(_NUMBER_FORMS)(
                    digits if digits.startswith("86") else "86" + digits
                )
        elif isinstance(event.get("sender"), str):
            event["sender"] = rng.choice([" ", "\t", "", "  "]) + event["sender"] + " "
        return _dumps(event)

    _ops: tuple[Callable[[Mutator, bytes], bytes], ...] = (
        _flip,
        _insert,
        _delete,
        _repeat,
        _splice,
        # JSON-aware edits reach past the parser; weighted so that most inputs do.
        _json,
        _json,
        _json,
        _json,
        _json,
        _json,
    )


class Checker:
    """Decides one input and records what is wrong with the decision, if anything."""

    def __init__(self, data: fl.ConsentData) -> None:
        from filterd.router import Decider, Policy

        self.data = data
        self.decider = Decider(fl.SetSnapshot.of(data), Policy(max_event_bytes=MAX_BYTES))
        self.executions = 0
        self.by_reason: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()
        self.examples: dict[str, dict[str, str]] = {}

    def __call__(self, value: bytes) -> str | None:
        self.executions += 1
        try:
            route, reason = self.decider.decide(value)
        except Exception as exc:  # Decider.decide promises never to raise
            return self._finding("exception", value, repr(exc), "")
        self.by_reason[reason] += 1
        if route not in ref.ROUTES or ref.REASON_ROUTE.get(reason) != route:
            return self._finding("bad-route-or-reason", value, f"{route}/{reason}", "")
        if reason == "internal-error":
            return self._finding("internal-error", value, f"{route}/{reason}", "")
        expected = self.data.reference(MAX_BYTES).decide(value)
        if (route, reason) != expected:
            return self._finding(
                "disagrees-with-reference", value, f"{route}/{reason}", "/".join(expected)
            )
        return None

    def _finding(self, kind: str, value: bytes, got: str, expected: str) -> str:
        key = f"{kind}: got {got}" + (f", reference {expected}" if expected else "")
        self.findings[key] += 1
        if key not in self.examples:
            self.examples[key] = {
                "input_repr": repr(value[:300]),
                "input_b64": base64.b64encode(value).decode(),
            }
        return key


def run_builtin(checker: Checker, corpus: list[bytes], seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    mutate = Mutator(corpus, rng)
    pool = list(corpus)
    for value in corpus:
        checker(value)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(1_000):
            value = mutate(rng.choice(pool))
            before = len(checker.by_reason)
            checker(value)
            # Cheap feedback: keep inputs that reach a reason not seen before, and a
            # trickle of others so that mutations compound.
            if len(checker.by_reason) > before or rng.random() < 0.001:
                pool.append(value)


def run_atheris(
    checker: Checker, corpus: list[bytes], seconds: float, seed: int, report: Callable[[], int]
) -> None:
    """libFuzzer drives; the first finding stops it with a crash artifact, as usual."""
    import atheris

    corpus_dir = Path(tempfile.mkdtemp(prefix="filterd-fuzz-corpus-"))
    for i, value in enumerate(corpus[:500]):
        (corpus_dir / f"seed-{i}").write_bytes(value)
    last_report = [time.monotonic()]

    def one_input(value: bytes) -> None:
        finding = checker(value)
        # libFuzzer ends the process itself, so the report is kept current as it runs.
        if finding is not None or time.monotonic() - last_report[0] > 5.0:
            report()
            last_report[0] = time.monotonic()
        if finding is not None:
            raise AssertionError(finding)

    args = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-seed={seed}"]
    args += [f"-max_len={MAX_BYTES + 64}", "-rss_limit_mb=4096", str(corpus_dir)]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mutation fuzzing of the decision path.")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--engine", choices=["auto", "builtin", "atheris"], default="auto")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz-mutation.json")
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "builtin"
    data = fl.make_dataset(random.Random(args.seed), senders=30, recipients=2_000, consents=4_000)
    corpus = make_corpus(data, 3_000, args.seed)
    if engine == "atheris":
        import atheris

        # Coverage feedback needs the decision modules instrumented as they load.
        with atheris.instrument_imports(include=["filterd"]):
            importlib.import_module("filterd.router")
    checker = Checker(data)
    started = time.monotonic()
    if engine == "atheris":
        import atexit

        def report() -> int:
            return _report(args.out, engine, checker, started, quiet=True)

        atexit.register(report)
        run_atheris(checker, corpus, args.seconds, args.seed, report)
    else:
        run_builtin(checker, corpus, args.seconds, args.seed)
    return _report(args.out, engine, checker, started)


def _report(out: Path, engine: str, checker: Checker, started: float, quiet: bool = False) -> int:
    elapsed = time.monotonic() - started
    report = {
        "engine": engine,
        "seconds": round(elapsed, 1),
        "executions": checker.executions,
        "executions_per_s": round(checker.executions / elapsed) if elapsed else 0,
        "findings": sum(checker.findings.values()),
        "distinct_findings": dict(checker.findings.most_common()),
        "examples": checker.examples,
        "by_reason": dict(sorted(checker.by_reason.items())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if quiet:
        return 1 if checker.findings else 0
    print(
        f"fuzz ({engine}): {checker.executions} executions in {elapsed:.0f}s, "
        f"{report['findings']} findings ({len(checker.findings)} distinct); report {out}",
        flush=True,
    )
    for key, n in checker.findings.most_common(10):
        print(f"  {n:8d}  {key}  e.g. {checker.examples[key]['input_repr']}", flush=True)
    return 1 if checker.findings else 0


if __name__ == "__main__":
    sys.exit(main())

"""The strongest peer: the filter as a Java Kafka Streams application, and its correctness gate.

The peer (``benchmarks/peers/kafka-streams/``, its README says how it is built
and tuned) is what a carrier's engineers would write: Kafka Streams' Processor
API, Jackson's streaming parser, roaring bitmaps. It reads the same snapshot
INPUTS (consents, opt-outs and do-not-disturb CSV files) that filterd's current
snapshot was built from (the snapshot's manifest names them) and writes the
contract's output: the value and key byte for byte, the four headers, partition
``p % N``.

It is built with Maven on first use into ``~/.cache/filterd/peers/`` (one
directory per digest of its sources, so an edit builds anew); the first build
downloads Kafka Streams, Jackson and RoaringBitmap from Maven Central into
``~/.m2`` and says so.

A peer is only timed after it passed the gate: every record of a set, through
the real broker, must get filterd's route and reason (filterd's own
:class:`~filterd.router.Decider` decides the same values in-process), and its
output must keep the contract (value, key, headers, partition).

    python -m benchmarks.peer_kafka_streams build
    python -m benchmarks.peer_kafka_streams run --threads 1 [--set NAME=VALUE] --config run.toml
    python -m benchmarks.peer_kafka_streams check [--events 20000] [--fuzz 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from benchmarks._common import (
    OutputWatcher,
    _partitions,
    bootstrap_from_env,
    create_topics,
    delete_topics,
    ensure_snapshot,
    unique_name,
)
from filterd.config import Config, PolicyConfig

log = logging.getLogger("benchmarks.peer_kafka_streams")

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "benchmarks" / "peers" / "kafka-streams"
MAIN_CLASS = "io.filterd.peer.FilterApp"
JAR = "filterd-peer-kafka-streams-0.jar"
#: A fixed heap: the peer's data is small (bitmaps), and a heap that grows during the
#: timed window would bill resizing to it.
JVM_OPTIONS = ("-Xms1g", "-Xmx1g", "-XX:+UseG1GC")
ROUTES = ("deliver", "block", "invalid")
#: Every reason filterd gives (internal-error is a bug, never expected).
REASONS = (
    "consent", "exempt-category", "opted-out", "unknown-sender", "recipient-dnd", "no-consent",
    "oversized", "malformed-json", "missing-field", "bad-field-type", "bad-recipient",
)  # fmt: skip


class PeerUnavailable(Exception):
    """The peer cannot be built here (no ``mvn`` or ``java``): skip it, saying why."""


class PeerError(Exception):
    """The peer failed to build or to run."""


# --------------------------------------------------------------------------- build


def cache_root() -> Path:
    """Where builds go: ``$XDG_CACHE_HOME/filterd/peers`` (``~/.cache/filterd/peers``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "filterd" / "peers"


def source_digest(peer_dir: Path = PEER_DIR) -> str:
    """A digest of the Kafka version, the peer's pom and sources: a change is a new build."""
    h = hashlib.sha256(kafka_version().encode() + b"\0")
    for path in sorted([peer_dir / "pom.xml", *(peer_dir / "src").rglob("*")]):
        if path.is_file():
            h.update(str(path.relative_to(peer_dir)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def kafka_version() -> str:
    """Kafka Streams' version: the local broker's (``$KAFKA_VERSION``, as deploy/local/kafka.sh)."""
    return os.environ.get("KAFKA_VERSION", "4.4.0")


def tools_missing() -> list[str]:
    """The tools a build and a run need that are not on PATH."""
    return [tool for tool in ("mvn", "java", "javac") if shutil.which(tool) is None]


def build(*, quiet: bool = False) -> Path:
    """The peer's build directory, building it first when the cache has none for these sources.

    Raises :class:`PeerUnavailable` without Maven or a JDK, :class:`PeerError` when the
    build fails (with Maven's output).
    """
    out = cache_root() / f"kafka-streams-{source_digest()}"
    if (out / "target" / JAR).is_file() and (out / ".complete").is_file():
        return out
    missing = tools_missing()
    if missing:
        raise PeerUnavailable(
            f"{', '.join(missing)} not found: the Kafka Streams peer needs Maven and a JDK 17"
        )
    m2 = Path("~/.m2/repository/org/apache/kafka/kafka-streams").expanduser()
    say = log.info if not quiet else log.debug
    if not m2.exists():
        say("building the Kafka Streams peer: the first build downloads Kafka Streams, Jackson "
            "and RoaringBitmap from Maven Central (about 30 MB, into ~/.m2)")  # fmt: skip
    else:
        say("building the Kafka Streams peer into %s", out)
    partial = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shutil.copy2(PEER_DIR / "pom.xml", partial / "pom.xml")
    shutil.copytree(PEER_DIR / "src", partial / "src")
    started = time.monotonic()
    res = subprocess.run(
        ["mvn", "-B", "-q", f"-Dkafka.version={kafka_version()}", "package"],
        cwd=partial,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0 or not (partial / "target" / JAR).is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise PeerError(
            f"mvn package failed ({res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}"
        )
    (partial / ".complete").write_text(f"built in {time.monotonic() - started:.1f} s\n")
    try:
        partial.rename(out)
    except OSError:
        # Another build finished first: use it.
        shutil.rmtree(partial, ignore_errors=True)
    say("Kafka Streams peer built in %.1f s", time.monotonic() - started)
    return out


def java_argv(build_dir: Path, properties: Path, mode: str = "run") -> list[str]:
    """The command that runs the peer (``run``) or decides framed stdin (``decide``)."""
    target = build_dir / "target"
    classpath = f"{target / JAR}{os.pathsep}{target / 'lib'}/*"
    return ["java", *JVM_OPTIONS, "-cp", classpath, MAIN_CLASS, mode, str(properties)]


# --------------------------------------------------------------------------- settings


def snapshot_inputs(root: Path) -> tuple[str, str, dict[str, str]]:
    """(version, country code, {kind: path}) of the snapshot current under ``root``.

    The peer reads the same inputs the version was built from, as its manifest records.
    """
    from filterd.snapshot import format as fmt

    version = fmt.resolve_version(Path(root), None)
    manifest = json.loads((Path(root) / version / fmt.MANIFEST).read_text())
    paths = {str(i["kind"]): str(i["path"]) for i in manifest["inputs"]}
    for kind, path in paths.items():
        if not Path(path).is_file():
            raise PeerError(f"snapshot {version}: its {kind} input {path} is gone")
    return version, str(manifest["country_code"]), paths


def filterd_applies_nfkc(country_code: str) -> bool:
    """Whether filterd's number normalization reads full-width digits (contract step 0)."""
    from filterd.errors import InvalidNumber
    from filterd.numbers import normalize

    try:
        normalize("＋８６１３８１２３４５６７８", country_code)
    except InvalidNumber:
        return False
    return True


def peer_properties(
    *,
    bootstrap: str,
    group: str,
    topics: Mapping[str, str],
    snapshot_root: Path,
    policy: PolicyConfig,
    threads: int = 1,
    streams: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """The peer's settings: the run's broker, group, topics, snapshot and policy.

    ``streams`` overrides Kafka Streams settings (``linger.ms``, ``producer.batch.size``, ...:
    any StreamsConfig name) over the peer's tuned defaults.
    """
    version, snapshot_cc, inputs = snapshot_inputs(snapshot_root)
    props = {
        "bootstrap.servers": bootstrap,
        "application.id": group,
        **{f"topics.{name}": topic for name, topic in topics.items()},
        "snapshot.version": version,
        "snapshot.country.code": snapshot_cc,
        "snapshot.consents": inputs["consents"],
        "snapshot.optouts": inputs.get("optouts", ""),
        "snapshot.dnd": inputs.get("dnd", ""),
        "policy.country.code": policy.default_country_code,
        "policy.max.event.bytes": str(policy.max_event_bytes),
        "policy.default.rule": policy.default_rule,
        "policy.nfkc": "true" if filterd_applies_nfkc(policy.default_country_code) else "false",
        **{f"policy.category.{name}": rule for name, rule in policy.categories.items()},
        "streams.num.stream.threads": str(threads),
    }
    for name, value in (streams or {}).items():
        props[f"streams.{name}"] = str(value)
    return props


def _escape(text: str) -> str:
    # java.util.Properties: \uXXXX for everything but plain ASCII letters, digits and
    # a few safe marks, so names and values may hold any character.
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in "._-/+*@"):
            out.append(ch)
        else:
            for unit in ch.encode("utf-16-be").hex(" ", 2).split():
                out.append(f"\\u{unit}")
    return "".join(out)


def write_properties(path: Path, props: Mapping[str, str]) -> Path:
    """Write ``props`` as a java.util.Properties file."""
    path.write_text("".join(f"{_escape(k)}={_escape(v)}\n" for k, v in props.items()))
    return path


def properties_from_config(
    config: Config, threads: int, streams: Mapping[str, object] | None = None
) -> dict[str, str]:
    """The peer's settings for a benchmark run's filterd config file."""
    k = config.kafka
    if k.security_protocol != "PLAINTEXT":
        raise PeerError("the Kafka Streams peer runs against a PLAINTEXT listener only")
    t = config.topics
    return peer_properties(
        bootstrap=k.bootstrap_servers,
        group=k.group_id,
        topics={"input": t.input, "deliver": t.deliver, "block": t.block, "invalid": t.invalid},
        snapshot_root=config.snapshot.root,
        policy=config.policy,
        threads=threads,
        streams=streams,
    )


# --------------------------------------------------------------------------- the gate


@dataclass(slots=True)
class Agreement:
    """How the peer's output compares with filterd's decisions on the same records."""

    records: int = 0
    #: Input records whose output has filterd's route and reason.
    agreed: int = 0
    #: filterd's reason -> records.
    by_reason: Counter[str] = field(default_factory=Counter)
    disagreed: int = 0
    #: Input records with no output record.
    missing: int = 0
    #: Output records beyond one per input (at-least-once may repeat after a failure).
    repeated: int = 0
    #: Output records breaking the contract: value, key, headers, partition, topic.
    contract_errors: int = 0
    examples: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every record agreed, nothing lost, the output contract kept."""
        return (
            self.records > 0
            and self.agreed == self.records
            and not (self.disagreed or self.missing or self.contract_errors)
        )

    def note(self, kind: str, **detail: object) -> None:
        if len(self.examples) < 20:
            self.examples.append({"kind": kind, **detail})

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "records": self.records,
            "agreed": self.agreed,
            "agreement": round(self.agreed / self.records, 6) if self.records else None,
            "disagreed": self.disagreed,
            "missing": self.missing,
            "repeated": self.repeated,
            "contract_errors": self.contract_errors,
            "by_reason": dict(sorted(self.by_reason.items())),
            "examples": self.examples,
        }


@dataclass(slots=True)
class _Output:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def compare(
    records: Sequence[tuple[bytes | None, bytes | None]],
    expected: Sequence[tuple[str, str]],
    placed: Sequence[tuple[int, int]],
    outputs: Sequence[_Output],
    *,
    input_topic: str,
    route_topics: Mapping[str, str],
    output_partitions: int,
    version: str,
) -> Agreement:
    """Check every output record against its input record and filterd's decision.

    ``placed[i]`` is (partition, offset) of input record ``i``; the ``filterd-source``
    header leads each output record back to its input.
    """
    agreement = Agreement(records=len(records))
    at = {(p, o): i for i, (p, o) in enumerate(placed)}
    topic_route = {topic: route for route, topic in route_topics.items()}
    seen: Counter[int] = Counter()
    for out in outputs:
        source = out.headers.get("filterd-source", b"").decode(errors="replace")
        topic, _, rest = source.rpartition("/")
        topic, _, part = topic.rpartition("/")
        i = at.get((int(part), int(rest))) if part.isdigit() and rest.isdigit() else None
        if topic != input_topic or i is None:
            agreement.contract_errors += 1
            agreement.note("unknown-source", source=source, topic=out.topic)
            continue
        seen[i] += 1
        if seen[i] > 1:
            agreement.repeated += 1
        key, value = records[i]
        route = out.headers.get("filterd-route", b"").decode(errors="replace")
        reason = out.headers.get("filterd-reason", b"").decode(errors="replace")
        problems = []
        if out.value != value:
            problems.append("value differs")
        if out.key != key:
            problems.append("key differs")
        if topic_route.get(out.topic) != route:
            problems.append(f"route header {route!r} on topic {out.topic}")
        if out.headers.get("filterd-snapshot") != version.encode():
            problems.append(f"snapshot header {out.headers.get('filterd-snapshot')!r}")
        if out.partition != placed[i][0] % output_partitions:
            problems.append(f"partition {out.partition}, not {placed[i][0]} % {output_partitions}")
        if problems:
            agreement.contract_errors += 1
            agreement.note("contract", record=i, problems=problems, value=repr(value)[:300])
        if seen[i] > 1:
            continue
        want = expected[i]
        agreement.by_reason[want[1]] += 1
        if (route, reason) == want:
            agreement.agreed += 1
        else:
            agreement.disagreed += 1
            agreement.note(
                "disagrees",
                record=i,
                filterd=f"{want[0]}/{want[1]}",
                peer=f"{route}/{reason}",
                value=repr(value)[:300],
            )
    for i, want in enumerate(expected):
        if not seen[i]:
            agreement.missing += 1
            agreement.note(
                "missing", record=i, filterd="/".join(want), value=repr(records[i][1])[:300]
            )
    return agreement


def filterd_decisions(
    values: Sequence[bytes | None], snapshot_root: Path, policy: PolicyConfig
) -> list[tuple[str, str]]:
    """filterd's (route, reason) per value: its own Decider on the same snapshot."""
    from filterd import router
    from filterd.snapshot import load_snapshot

    decide = router.Decider(load_snapshot(snapshot_root), policy).decide
    return [tuple(decide(v)) for v in values]  # type: ignore[misc]


async def _produce(
    bootstrap: str,
    topic: str,
    partitions: int,
    records: Sequence[tuple[bytes | None, bytes | None]],
) -> list[tuple[int, int]]:
    """Write record ``i`` to partition ``i % partitions``; (partition, offset) of each."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_request_size=4 << 20
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key, partition=i % partitions)
            for i, (key, value) in enumerate(records)
        ]
        metas = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topics: Sequence[str]) -> list[_Output]:
    """Every record of ``topics``, one partition at a time, to the end offsets."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[_Output] = []
    try:
        # Every partition first: once one is assigned, the consumer's metadata covers
        # only the assigned topics.
        for tp in await _partitions(consumer, topics):
            end = (await consumer.end_offsets([tp]))[tp]
            if not end:
                continue
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            empty = 0
            while await consumer.position(tp) < end:
                got = (await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)).get(tp, [])
                empty = 0 if got else empty + 1
                if empty >= 30:
                    raise TimeoutError(f"{tp}: no records for 30 s short of offset {end}")
                out.extend(
                    _Output(tp.topic, tp.partition, r.key, r.value, dict(r.headers)) for r in got
                )
        return out
    finally:
        await consumer.stop()


async def check_agreement(
    records: Sequence[tuple[bytes | None, bytes | None]],
    *,
    bootstrap: str,
    snapshot_root: Path,
    policy: PolicyConfig | None = None,
    workdir: Path,
    input_partitions: int = 4,
    output_partitions: int = 3,
    threads: int = 1,
    timeout_s: float = 180.0,
    keep_topics: bool = False,
) -> Agreement:
    """Run the peer over ``records`` through the broker and compare with filterd's decisions.

    Input partitions differ from output partitions by default, so ``p % N`` is checked.
    """
    policy = policy or PolicyConfig()
    built = await asyncio.to_thread(build)
    expected = await asyncio.to_thread(
        filterd_decisions, [v for _, v in records], snapshot_root, policy
    )
    base = unique_name("peer-gate")
    topics = {"input": f"{base}.in", **{r: f"{base}.{r}" for r in ROUTES}}
    await create_topics(bootstrap, [topics["input"]], input_partitions)
    await create_topics(bootstrap, [topics[r] for r in ROUTES], output_partitions)
    props = peer_properties(
        bootstrap=bootstrap,
        group=unique_name("peer-gate-app"),
        topics=topics,
        snapshot_root=snapshot_root,
        policy=policy,
        threads=threads,
    )
    props_path = write_properties(workdir / f"{base}.properties", props)
    log_path = workdir / f"{base}.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        placed = await _produce(bootstrap, topics["input"], input_partitions, records)
        proc = _spawn(java_argv(built, props_path), log_path)
        outputs = [topics[r] for r in ROUTES]
        async with OutputWatcher(bootstrap, outputs) as watcher:
            try:
                await watcher.wait_for(
                    len(records), stall_timeout_s=timeout_s, alive=lambda: proc.poll() is None
                )
            except (TimeoutError, RuntimeError) as exc:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise PeerError(f"peer did not route every record: {exc}\n{tail}") from exc
        await asyncio.to_thread(_stop, proc)
        got = await _read_all(bootstrap, outputs)
        return compare(
            records,
            expected,
            placed,
            got,
            input_topic=topics["input"],
            route_topics={r: topics[r] for r in ROUTES},
            output_partitions=output_partitions,
            version=props["snapshot.version"],
        )
    finally:
        if proc is not None:
            await asyncio.to_thread(_stop, proc)
        if not keep_topics:
            with contextlib.suppress(Exception):
                await delete_topics(bootstrap, list(topics.values()))


def _spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 40.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def decide_offline(
    values: Sequence[bytes | None],
    *,
    snapshot_root: Path,
    policy: PolicyConfig | None = None,
    workdir: Path,
) -> list[tuple[str, str]]:
    """The peer's decisions without a broker (its ``decide`` mode): for quick checks."""
    props = peer_properties(
        bootstrap="-",
        group="-",
        topics=dict.fromkeys(("input", *ROUTES), "-"),
        snapshot_root=snapshot_root,
        policy=policy or PolicyConfig(),
    )
    path = write_properties(workdir / "peer-decide.properties", props)
    framed = bytearray()
    for v in values:
        framed += (-1).to_bytes(4, "big", signed=True) if v is None else len(v).to_bytes(4, "big")
        framed += v or b""
    res = subprocess.run(
        java_argv(build(), path, "decide"), input=bytes(framed), capture_output=True, check=False
    )
    if res.returncode != 0:
        raise PeerError(f"peer decide failed: {res.stderr.decode(errors='replace')[-2000:]}")
    lines = res.stdout.decode().splitlines()
    return [tuple(line.split(" ", 1)) for line in lines]  # type: ignore[misc]


# --------------------------------------------------------------------------- data for the gate


def hostile_values(
    sender: str, recipient: str, max_event_bytes: int = 65_536
) -> Iterator[bytes | None]:
    """Hand-written edge cases around one known (sender, recipient): every invalid reason,
    and the places where JSON parsers and white-space rules differ."""
    nat = "".join(c for c in recipient if c.isascii() and c.isdigit())[-11:]
    full = nat.translate(str.maketrans("0123456789", "０１２３４５６７８９"))

    def ev(**fields: object) -> bytes:
        base: dict[str, object] = {"id": "h", "sender": sender, "recipient": recipient}
        base.update(fields)
        return json.dumps(
            {k: v for k, v in base.items() if v is not _DROP}, ensure_ascii=False
        ).encode("utf-8", "surrogatepass")

    ok = ev()
    yield ok
    for rcpt in (
        f"＋86{full}", full, f"0{full}", f"+86 {nat[:3]} {nat[3:7]} {nat[7:]}", f"0086{nat}",
        f"00 86 {nat}", f"0{nat}", f"00{nat}", f"000{nat}", f"+0086{nat}", f"++86{nat}",
        f"86{nat}", f"({nat[:3]}){nat[3:]}", f"{nat[:3]}.{nat[3:]}", f"\t{nat}", f"{nat}\n",
        f"\u00a0{nat}", f"{nat}\u3000", "   ", "\u3000", "\u2007", "", "+", "00", "0", "+86",
        f"+86{nat}0000", "+861", f"{nat[:7]}", f"+86{nat[:5]}", "١٣٨١٢٣٤٥٦٧٨", f"+86{nat}x",
        f"+86_{nat}", f"+{nat[0]}_{nat[1:]}", f" +86{nat}", f"+86{nat} ", "+123456789012345",
        "+1234567890123456", "+01234567890", "12345678", "1234567", "+9" * 8, "\u200b" + nat,
    ):  # fmt: skip
        yield ev(recipient=rcpt)
    for snd in (f" {sender} ", f"\u00a0{sender}", f"{sender}\u3000", f"\t{sender}\n", "", " ",
                "\u2028", "\u200b", sender.lower(), f"{sender}\u200b", "\x1c"):  # fmt: skip
        yield ev(sender=snd)
    for mid in ("", " ", "\u00a0", "\u3000", "\x85", "\u200b", None, 7, True, [], {}):
        yield ev(id=mid)
    for cat in ("marketing", "transactional", "verification", "promo", None, "", " marketing",
                "Marketing", "verification ", 3, True, [], {"a": 1}, "验证码"):  # fmt: skip
        yield ev(category=cat)
    for text in (None, "", "x", 5, [], {"deep": [1, {"x": None}]}, True, "\x00"):
        yield ev(text=text)
    for ts in (None, 0, -1, 1.0, 1.5, True, False, "1", [], 2**63 - 1, 2**64 - 1, 2**64, -(2**63),
               -(2**63) - 1, 10**30):  # fmt: skip
        yield ev(ts=ts)
    for name in ("id", "sender", "recipient"):
        yield ev(**{name: _DROP})
        yield ev(**{name: None})
        yield ev(**{name: 12})
        yield ev(**{name: ["x"]})
    yield ev(id=None, sender=5)  # missing wins over a wrong type
    yield ev(id=5, recipient=" ")
    yield ev(recipient=5, category=5)
    yield ev(category=5, recipient="bad")
    yield ev(ts="x", recipient="bad")
    head = ok[:-1]
    pair = b'"sender":%b,"recipient":%b' % (orjson.dumps(sender), orjson.dumps(recipient))
    raw = [
        None, b"", b" ", b"null", b"[]", b"{}", b'"x"', b"1", b"true", ok + b" ", b" \t\r\n" + ok,
        ok + b"\x00", b"\x00" + ok, b"\xef\xbb\xbf" + ok, ok + b"{}", ok + b",", ok[:-1],
        b"\x0c" + ok, ok.replace(b"{", b"{ ", 1), head + b',"x":1e400}', head + b',"x":-1e400}',
        head + b',"x":1e308}', head + b',"x":1.7976931348623157e308}', head + b',"x":1e-400}',
        head + b',"x":' + b"1" * 400 + b"}", head + b',"x":' + b"1" * 308 + b"}",
        head + b',"x":18446744073709551616}', head + b',"x":0.' + b"0" * 5000 + b"1}",
        head + b',"x":NaN}', head + b',"x":Infinity}', head + b',"x":01}', head + b',"x":1.}',
        head + b',"x":.5}', head + b',"x":+1}', head + b',"x":-}', head + b',"x":1e}',
        head + b',"x":-0}', head + b',"x":[1,]}', head + b',}', head + b',"x":tru}',
        head + b',"x":"\\ud800"}', head + b',"x":"\\udc00"}', head + b',"x":"\\ud83d\\ude00"}',
        head + b',"x":"\\uD83D\\uDE00"}', head + b',"x":"\\ud83dx"}', head + b',"\\ud800":1}',
        head + b',"x":"\\q"}', head + b',"x":"\\u12"}', head + b',"x":"a\tb"}',
        head + b',"x":"a\x7fb"}', head + b',"x":"\\u0000"}', head + b',"x":"\xed\xa0\x80"}',
        head + b',"x":"\xc0\x80"}', head + b',"x":"\xf4\x90\x80\x80"}', head + b',"x":"\xe4\xbd"}',
        head + b',"x":"\xff"}', head + b',"x":"\xe4\xbd\xa0"}', ok[:-1] + b',"x":"\xe4\xbd',
        head + b',"x":' + b"[" * 1023 + b"]" * 1023 + b"}",
        head + b',"x":' + b"[" * 1024 + b"]" * 1024 + b"}",
        b"[" * 1024 + b"]" * 1024, b"[" * 1025 + b"]" * 1025,
        head + b',"x":' + b'{"a":' * 1023 + b"1" + b"}" * 1023 + b"}",
        head + b',"x":' + b'{"a":' * 1024 + b"1" + b"}" * 1024 + b"}",
        b'{"\\u0069d":"h",%b}' % pair, b'{"id":"h","id":5,%b}' % pair,
        b'{"id":5,"id":"h",%b}' % pair, b'{"recipient":"bad","id":"h",%b}' % pair,
        b"{'id':'h'}", b'{id:"h"}', b'{"id":"h" /* c */}', b'{"a":1}\x1e',
        head + b',"y":"' + b"x" * 60_000 + b'"}', head + b',"' + b"k" * 60_000 + b'":1}',
    ]  # fmt: skip
    yield from raw
    # The size limit: exactly at it, one over.
    for size in (max_event_bytes, max_event_bytes + 1):
        pad = size - len(head) - len(b',"pad":""}')
        yield head + b',"pad":"' + b"p" * pad + b'"}'


_DROP = object()


def gate_records(
    dataset: Path, *, events: int, fuzz: int, seed: int = 11, bad_rate: float = 0.02
) -> list[tuple[bytes | None, bytes | None]]:
    """Benchmark-like events, hand-written edge cases and mutated events, as (key, value)."""
    from filterd.loadgen import load_dataset
    from filterd.loadgen.events import iter_labelled_events
    from tests.chaos.fuzz_mutation import Mutator

    ds = load_dataset(dataset)
    labelled = list(iter_labelled_events(ds, events, seed=seed, bad_rate=bad_rate, ts_ms=1))
    records: list[tuple[bytes | None, bytes | None]] = [(e.key, e.value) for e in labelled]
    rng = random.Random(seed)
    # Edge cases around pairs of every outcome, so each hostile form meets each rule.
    by_kind: dict[str, list[bytes]] = {}
    for e in labelled:
        if not e.kind.startswith("bad:"):
            by_kind.setdefault(e.kind, []).append(e.value)
    for kind in sorted(by_kind):
        event = orjson.loads(rng.choice(by_kind[kind]))
        # A record needs a key or a value: the null value gets a key.
        records.extend(
            (b"null-value" if v is None else None, v)
            for v in hostile_values(event["sender"], event["recipient"])
        )
    # Mutations start from the generated events (the nesting edge cases would only
    # make the mutator's own JSON encoder recurse too deep).
    corpus = [e.value for e in labelled if len(e.value) < 4096]
    mutate = Mutator(corpus, rng)
    records.extend((None, mutate(rng.choice(corpus))) for _ in range(fuzz))
    return records


# --------------------------------------------------------------------------- command line


def _run_command(args: argparse.Namespace) -> int:
    from filterd.config import load_config

    config = load_config(args.config)
    streams: dict[str, object] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise PeerError(f"--set {item!r}: not NAME=VALUE")
        streams[name.strip()] = value.strip()
    built = build()
    props = properties_from_config(config, args.threads, streams)
    # Beside the run's config: the harness's work directory keeps both.
    path = write_properties(Path(args.config).with_suffix(".kafka-streams.properties"), props)
    argv = java_argv(built, path)
    sys.stdout.flush()
    sys.stderr.flush()
    # The JVM takes this process's place: its pid is the variant's, for the harness's
    # signals and for CPU time from /proc.
    os.execvp(argv[0], argv)
    return 1  # not reached


def _check_command(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="filterd-peer-gate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    dataset, snapshot_root = ensure_snapshot(workdir, Path(args.dataset) if args.dataset else None)
    records = gate_records(dataset, events=args.events, fuzz=args.fuzz, seed=args.seed)
    log.info("gate: %d records (%d fuzzed) through the broker", len(records), args.fuzz)
    started = time.monotonic()
    agreement = asyncio.run(
        check_agreement(
            records,
            bootstrap=bootstrap_from_env(args.bootstrap),
            snapshot_root=snapshot_root,
            workdir=workdir,
            threads=args.threads,
        )
    )
    report = {**agreement.as_dict(), "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if agreement.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks.peer_kafka_streams", description=__doc__.splitlines()[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the peer (cached) and print its directory")
    run = sub.add_parser("run", help="run the peer for a benchmark run (until SIGTERM)")
    run.add_argument("--config", required=True, help="the run's filterd TOML config")
    run.add_argument("--threads", type=int, default=1, help="num.stream.threads (default 1)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Kafka Streams setting over the peer's tuned ones, e.g. producer.linger.ms=50",
    )
    check = sub.add_parser("check", help="the correctness gate: agreement with filterd")
    check.add_argument("--events", type=int, default=20_000, help="benchmark-like events")
    check.add_argument("--fuzz", type=int, default=5_000, help="mutated events besides")
    check.add_argument("--seed", type=int, default=11)
    check.add_argument("--threads", type=int, default=1)
    check.add_argument("--dataset", help="a `filterd loadgen dataset` directory to use")
    check.add_argument("--workdir", help="keep data, snapshot, settings and the peer's log here")
    check.add_argument("--bootstrap", help="broker (default $KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "build":
            print(build())
            return 0
        if args.command == "run":
            return _run_command(args)
        return _check_command(args)
    except PeerUnavailable as exc:
        print(f"peer_kafka_streams: unavailable: {exc}", file=sys.stderr)
        return 3
    except PeerError as exc:
        print(f"peer_kafka_streams: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

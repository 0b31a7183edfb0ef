"""Build a snapshot version from CSV inputs and publish it atomically.

Reading the inputs is :mod:`filterd.snapshot.inputs`; this module writes the
version into a temporary directory under the root, makes it durable (fsync of
every file and directory), renames it into place and switches the ``current``
pointer atomically. Nothing is published unless every row of every input is
good, or at most ``max_rejects`` rows are bad: those are left out and listed in
the version's ``rejects.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import shutil
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence, Set
from datetime import UTC, datetime
from pathlib import Path

from pyroaring import BitMap64

from filterd.errors import SnapshotError
from filterd.snapshot import format as fmt
from filterd.snapshot.errors import BadRow
from filterd.snapshot.evidence import DEFAULT_ACCEPT_METHODS, SenderTerms, read_consents
from filterd.snapshot.granted import GRANTED, write_granted
from filterd.snapshot.inputs import (
    InputFile,
    Progress,
    Rejects,
    check_encoding,
    read_numbers,
    read_pairs,
)
from filterd.snapshot.publish import DEFAULT_MAX_DROP, publish_version
from filterd.snapshot.signing import sign_version
from filterd.snapshot.store import FOREVER

__all__ = [
    "GLOBAL_SENDER", "build_snapshot", "place_version", "prune_versions", "refused_report",
]  # fmt: skip

#: The opt-outs sender id that means every sender.
GLOBAL_SENDER = "*"

log = logging.getLogger(__name__)

_STALE_TMP_S = 3600.0  # a temp dir older than this is a crashed build, safe to remove


class _DataFile:
    """A ``.roar`` file being written: chunks appended, hashed on the way, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._hash = hashlib.sha256()
        self.size = 0
        #: Pairs written with a cap schedule (terms.bin, format version 3).
        self.scheduled = 0

    def write_bitmap(self, bitmap: BitMap64) -> list[list[int]]:
        chunks: list[list[int]] = []
        for piece in fmt.split_chunks(bitmap):
            data = piece.serialize()
            self._f.write(data)
            self._hash.update(data)
            chunks.append([self.size, len(data), len(piece)])
            self.size += len(data)
        return chunks

    def write_terms(self, terms: SenderTerms | None) -> list[int]:
        """[offset, length, count] of one sender's terms record ([] for none)."""
        if terms is None:
            return []
        offset = self.size
        parts = [terms.numbers, terms.until] + ([terms.caps] if any(terms.caps) else [])
        if terms.schedules:
            # Format version 3: the cap schedules, one row per step, after the caps.
            rows = [(n, u, c) for n in sorted(terms.schedules) for u, c in terms.schedules[n]]
            parts += [array(code, (r[k] for r in rows)) for k, code in enumerate("QqI")]
            self.scheduled += len(terms.schedules)
        for part in parts:
            if sys.byteorder != "little":
                part = array(part.typecode, part)
                part.byteswap()
            self.write_raw(part.tobytes())
        return [offset, self.size - offset, len(terms.numbers)]

    def write_raw(self, data: bytes) -> None:
        self._f.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close(self) -> dict[str, object]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return {"bytes": self.size, "sha256": self._hash.hexdigest()}


def refused_report(
    refused: Counter[tuple[str, str]], accept: Sequence[str], method_column: bool
) -> tuple[dict[str, object], bytes]:
    """The refused-consent report: (JSON object, CSV bytes) per sender and method."""
    by_sender: dict[str, dict[str, int]] = {}
    for (sender, method), rows in sorted(refused.items()):
        by_sender.setdefault(sender, {})[method] = rows
    by_method: Counter[str] = Counter()
    for (_sender, method), rows in refused.items():
        by_method[method] += rows
    report: dict[str, object] = {
        "accept_methods": list(accept),
        "method_column": method_column,
        "total_rows": sum(refused.values()),
        "by_method": dict(sorted(by_method.items())),
        "by_sender": by_sender,
    }
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["sender", "method", "rows"])
    for (sender, method), rows in sorted(refused.items()):
        writer.writerow([sender, method, rows])
    return report, text.getvalue().encode()


def rejects_csv(rows: Sequence[BadRow]) -> bytes:
    """``rejects.csv``: file, line, reason and the text of every bad row left out."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "line", "reason", "row"])
    writer.writerows(rows)
    return text.getvalue().encode()


class _Consents:
    """What the consents input gave: plain bitmaps, terms, refused rows, the methods."""

    def __init__(
        self,
        bitmaps: dict[str, BitMap64],
        terms: dict[str, SenderTerms],
        refused: Counter[tuple[str, str]],
        accept: Sequence[str],
        method_column: bool,
    ) -> None:
        self.bitmaps = bitmaps
        self.terms = terms
        self.refused = refused
        self.accept = accept
        self.method_column = method_column


def _granted_files(tmp: Path, consents: InputFile) -> dict[str, dict[str, object]]:
    """``granted.csv.gz`` (per-row consent evidence) when the consents input has a
    ``granted_at`` column: its ``files`` entry, or nothing."""
    entry = write_granted(consents.path, tmp / GRANTED, consents.encoding)
    if entry is None:
        return {}
    return {GRANTED: entry}


def _write_version(
    tmp: Path,
    version: str,
    created_at: datetime,
    country_code: str,
    inputs: list[InputFile],
    consents: _Consents,
    optouts: dict[str, BitMap64],
    global_optouts: BitMap64,
    dnd: BitMap64,
    rejects: Rejects,
    *,
    carried: dict[str, dict[str, object]] | None = None,
    extra: dict[str, object] | None = None,
) -> None:
    """Write a version's files and manifest into ``tmp``. ``carried`` are the ``files``
    entries of files already put in ``tmp`` (a compaction's evidence and rejects; default:
    the evidence made from the consents input); ``extra`` adds or replaces manifest entries
    (a compaction's watermark and inputs)."""
    files: dict[str, dict[str, object]] = {}
    consent_file = _DataFile(tmp / fmt.CONSENTS)
    optout_file = _DataFile(tmp / fmt.OPTOUTS)
    sender_file = _DataFile(tmp / fmt.SENDERS)
    terms_file = _DataFile(tmp / fmt.TERMS)
    empty = BitMap64()
    n_consents = n_optouts = n_terms = 0
    senders = sorted(consents.bitmaps.keys() | consents.terms.keys() | optouts.keys())
    for sender in senders:
        c = consents.bitmaps.get(sender, empty)
        o = optouts.get(sender, empty)
        t = consents.terms.get(sender)
        n_consents += len(c)
        n_optouts += len(o)
        if t is not None:
            n_terms += len(t.numbers)
            # Terms of numbers outside the plain set are consents of their own.
            n_consents += sum(1 for until in t.until if until != FOREVER)
        entry = {
            "id": sender,
            "consents": consent_file.write_bitmap(c),
            "optouts": optout_file.write_bitmap(o),
            "terms": terms_file.write_terms(t),
        }
        sender_file.write_raw(fmt.dumps(entry) + b"\n")
    files[fmt.CONSENTS] = consent_file.close()
    files[fmt.OPTOUTS] = optout_file.close()
    files[fmt.SENDERS] = sender_file.close()
    files[fmt.TERMS] = terms_file.close()
    # Version 2 unless a cap schedule needs 3: readers of 2 load everything else.
    format_version = fmt.FORMAT_VERSION if terms_file.scheduled else fmt.FORMAT_VERSION - 1
    dnd_file = _DataFile(tmp / fmt.DND)
    dnd_chunks = dnd_file.write_bitmap(dnd)
    files[fmt.DND] = dnd_file.close()
    global_file = _DataFile(tmp / fmt.GLOBAL_OPTOUTS)
    global_chunks = global_file.write_bitmap(global_optouts)
    files[fmt.GLOBAL_OPTOUTS] = global_file.close()
    report, report_csv = refused_report(consents.refused, consents.accept, consents.method_column)
    for name, data in (
        (fmt.REFUSED_JSON, fmt.dumps(report) + b"\n"),
        (fmt.REFUSED_CSV, report_csv),
    ):
        report_file = _DataFile(tmp / name)
        report_file.write_raw(data)
        files[name] = report_file.close()
    if rejects.rows:
        rejects_file = _DataFile(tmp / fmt.REJECTS_CSV)
        rejects_file.write_raw(rejects_csv(rejects.rows))
        files[fmt.REJECTS_CSV] = rejects_file.close()
    files.update(_granted_files(tmp, inputs[0]) if carried is None else carried)
    manifest: dict[str, object] = {
        "format": fmt.FORMAT_NAME,
        "format_version": format_version,
        "version": version,
        "created_at": fmt.utc_timestamp(created_at),
        "country_code": country_code,
        "counts": {
            "senders": len(senders),
            "consents": n_consents,
            "optouts": n_optouts,
            "dnd": len(dnd),
            "global_optouts": len(global_optouts),
            "terms": n_terms,
        },
        "files": files,
        "dnd_chunks": dnd_chunks,
        "global_optout_chunks": global_chunks,
        "chunk_max_containers": fmt.CHUNK_MAX_CONTAINERS,
        "accept_methods": list(consents.accept),
        "method_column": consents.method_column,
        "refused_rows": {"total": report["total_rows"], "by_method": report["by_method"]},
        "rejected_rows": {"total": len(rejects.rows), "max_rejects": rejects.limit},
        "inputs": [
            {
                "kind": i.kind,
                "path": str(i.path),
                "bytes": i.bytes,
                "sha256": i.sha256,
                "rows": i.rows,
                "encoding": i.encoding,
                "without_plus": {"count": i.without_plus, "lines": i.without_plus_lines},
            }
            for i in inputs
        ],
    }
    manifest.update(extra or {})
    # The manifest is written last: a directory without one is a half-written version.
    with open(tmp / fmt.MANIFEST, "wb") as f:
        f.write(fmt.dumps(manifest) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    fmt.fsync_dir(tmp)


def build_snapshot(
    root: Path,
    consents: Path,
    optouts: Path | None = None,
    dnd: Path | None = None,
    *,
    keep: int = 5,
    country_code: str = "86",
    progress: Progress | None = None,
    now: datetime | None = None,
    sign_key: Path | None = None,
    accept_methods: Sequence[str] = DEFAULT_ACCEPT_METHODS,
    publish: bool = True,
    max_drop: float = DEFAULT_MAX_DROP,
    force: bool = False,
    max_rejects: int = 0,
    encoding: str = "utf-8",
) -> str:
    """Build a new snapshot version under ``root`` from CSV inputs, publish it, return its name.

    ``consents`` and ``optouts`` need ``sender`` and ``recipient`` columns,
    ``dnd`` a ``recipient`` column (found by header name; other columns are
    ignored). Files ending in ``.gz`` are gunzipped while streaming. A bad row
    raises :class:`SnapshotInputError` naming file and line, and nothing is
    published: every bad row of every input is listed (the first 100 in the
    message, all in :attr:`SnapshotRowsRejected.rows`). With ``max_rejects`` N, a
    build with at most N bad rows goes on without them and lists them in the
    version's ``rejects.csv``. The inputs are read in ``encoding`` (``gbk``,
    ``gb18030``...). Recipients that look like E.164 without ``+`` are read as
    national numbers and counted per input in the manifest (``without_plus``).
    After publishing, only the newest ``keep`` versions are kept.
    ``country_code`` is the default for national numbers in the inputs;
    ``progress`` receives a status line at most about once a second.

    Consent rows whose ``method`` is not in ``accept_methods`` are kept as
    refused consents and counted per sender and method (``refused.json``,
    ``refused.csv``); a consents file without a ``method`` column has every row
    accepted, which the manifest (``method_column``) and the log say. Opt-outs of
    sender ``*`` apply to every sender.
    With ``sign_key`` the manifest is signed before the version appears
    (docs/security.md).

    It becomes current through the publish guards (:mod:`filterd.snapshot.publish`: not
    empty, no count dropped by more than ``max_drop``; ``force`` overrides them), unless
    ``publish`` is false. A refused version stays built: :class:`PublishRefused` names it.
    Pruning keeps the newest ``keep`` versions, and never the one in force or the one it
    replaced (``audit why`` re-decides with older versions).
    """
    if keep < 1:
        raise SnapshotError("keep must be at least 1")
    root = Path(root)
    started = time.monotonic()
    created_at = now or datetime.now(UTC)
    inputs: list[InputFile] = []
    accept = tuple(accept_methods)
    encoding = check_encoding(encoding)
    rejects = Rejects(max_rejects)
    record, rows, consent_maps, terms = read_consents(
        Path(consents), country_code, accept, progress, rejects, encoding
    )
    inputs.append(record)
    if not rows.method_column:
        log.info("%s has no method column: every consent row counts as accepted", record.path.name)
    consent_set = _Consents(consent_maps, terms, rows.refused, accept, rows.method_column)
    optout_maps: dict[str, BitMap64] = {}
    if optouts is not None:
        record, optout_maps = read_pairs(
            Path(optouts), "optouts", country_code, progress, rejects, encoding
        )
        inputs.append(record)
    global_optouts = optout_maps.pop(GLOBAL_SENDER, BitMap64())
    dnd_map = BitMap64()
    if dnd is not None:
        record, dnd_map = read_numbers(Path(dnd), "dnd", country_code, progress, rejects, encoding)
        inputs.append(record)
    rejects.check()  # nothing is written when more rows are bad than allowed
    if rejects.rows:
        log.info("%d bad input rows left out (--max-rejects %d)", len(rejects.rows), max_rejects)
    for record in inputs:
        if record.without_plus:
            log.info(
                "%s: %d recipients without '+' start with country code %s: read as national"
                " numbers (lines %s)",
                record.path.name,
                record.without_plus,
                country_code,
                ", ".join(map(str, record.without_plus_lines)),
            )

    def write(tmp: Path, version: str) -> None:
        _write_version(
            tmp, version, created_at, country_code, inputs, consent_set, optout_maps,
            global_optouts, dnd_map, rejects,
        )  # fmt: skip

    version, removed = place_version(
        root, created_at, write, sign_key=sign_key, publish=publish, max_drop=max_drop,
        force=force, keep=keep,
    )  # fmt: skip
    if not publish:
        return version
    log.info(
        "snapshot %s published: %d senders, %d rows (%d consent rows of methods not"
        " accepted) in %.1fs, %d old versions removed",
        version,
        len(consent_maps.keys() | terms.keys() | optout_maps.keys()),
        sum(i.rows for i in inputs),
        sum(rows.refused.values()),
        time.monotonic() - started,
        len(removed),
    )
    return version


def place_version(
    root: Path,
    created_at: datetime,
    write: Callable[[Path, str], None],
    *,
    sign_key: Path | None,
    publish: bool,
    max_drop: float,
    force: bool,
    keep: int,
) -> tuple[str, list[str]]:
    """Write a new version with ``write(tmp, version)`` into a temporary directory, sign it
    (``sign_key``), rename it into place and publish it through the guards unless
    ``publish`` is false; prune old versions. Returns (version, versions removed)."""
    root.mkdir(parents=True, exist_ok=True)
    version = fmt.new_version(root, created_at)
    tmp = root / f"{fmt.TMP_PREFIX}{version}"
    tmp.mkdir()
    try:
        write(tmp, version)
        if sign_key is not None:
            sign_version(tmp, sign_key)
        os.rename(tmp, root / version)
        fmt.fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not publish:
        log.info("snapshot %s built, not published (--no-publish)", version)
        return version, []
    previous = fmt.current_version(root)
    publish_version(root, version, max_drop=max_drop, force=force)
    return version, prune_versions(root, keep, protect={previous} if previous else set())


def prune_versions(root: Path, keep: int, protect: Set[str] = frozenset()) -> list[str]:
    """Remove all but the newest ``keep`` versions (never the current one, nor ``protect``);
    return them.

    Temp directories of crashed builds older than an hour go too; younger ones
    may belong to a build in progress.
    """
    current = fmt.current_version(root)
    versions = fmt.list_versions(root)
    doomed = [
        v for v in versions[: max(0, len(versions) - keep)] if v != current and v not in protect
    ]
    for version in doomed:
        shutil.rmtree(root / version, ignore_errors=True)
    cutoff = time.time() - _STALE_TMP_S
    for name in os.listdir(root):
        path = root / name
        if name.startswith(fmt.TMP_PREFIX) and path.is_dir() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
    if doomed:
        fmt.fsync_dir(root)
    return doomed


def stderr_progress(line: str) -> None:
    """Progress sink for the CLI: one status line on stderr."""
    print(line, file=sys.stderr, flush=True)

"""Synthetic consent population: who consented to whom, written as snapshot inputs.

The population is *arithmetic*, not stored: recipient ``r`` (an index in
``0 .. recipients-1``) maps to a phone number by an affine permutation, and
each sender's consent set is an affine progression over the recipient
indices, ``r = (j * a + b) mod R`` for ``j`` in a range. That gives three
properties the load generator needs:

* the CSV files can be streamed sender by sender in chunks, in constant
  memory, however many consents are asked for;
* ``population.json`` only stores a few integers per sender, so events can be
  generated against the data set without reading the CSVs back;
* membership is O(1) arithmetic (``j = (r - b) * a⁻¹ mod R``), which makes
  :meth:`Dataset.expected` an independent reference model of the policy that
  tests can compare the bitmap-based router against.

For one sender, positions ``j`` of the progression are laid out as::

    [0, consents - optouts_consented)        consented          -> consent
    [consents - optouts_consented, consents) consented, then opted out -> opted-out
    [consents, consents + optouts_only)      opted out, never consented -> opted-out
    [consents + optouts_only, R)             no row at all      -> dnd / no-consent
"""

from __future__ import annotations

import gzip
import io
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from filterd.errors import FilterdError

__all__ = [
    "POPULATION_FORMAT",
    "Dataset",
    "DatasetError",
    "SenderSpec",
    "load_dataset",
    "plan_population",
    "render_number",
    "write_dataset",
]

POPULATION_FORMAT = "filterd-loadgen-population/1"

#: Mobile prefixes of mainland China (``1[3-9]x``); 8 subscriber digits follow.
MOBILE_PREFIXES: tuple[int, ...] = (
    *range(130, 140),
    145,
    147,
    *range(150, 154),
    *range(155, 160),
    162,
    *range(165, 168),
    *range(170, 179),
    *range(180, 190),
    *range(190, 194),
    *range(195, 200),
)
_PREFIX_INDEX = {p: i for i, p in enumerate(MOBILE_PREFIXES)}
_SUBSCRIBERS = 10**8
_NATIONAL_SCALE = 10**11  # 11 national digits

#: Well-known alphanumeric sender ids; the rest are SP ports ``1069000xxxxx``.
ALPHANUMERIC_SENDERS: tuple[str, ...] = (
    "TAOBAO",
    "JD-SHOP",
    "PINDUODUO",
    "MEITUAN",
    "ALIPAY",
    "CMBCHINA",
    "CTRIP",
    "DIDI",
    "ELEME",
    "VIPSHOP",
    "SUNING",
    "XIAOMI",
)

#: How often each written form of a number appears, out of 20. Every form is
#: one the contract accepts; a bare ``86...`` prefix without ``+`` is never
#: written because the contract reads it as a national number.
_FORM_WEIGHTS: tuple[tuple[int, int], ...] = (
    (0, 10),  # +8613812345678
    (1, 5),  # 13812345678
    (2, 1),  # 008613812345678
    (3, 2),  # +86 138 1234 5678
    (4, 1),  # 138-1234-5678
    (5, 1),  # 013812345678 (national with a trunk 0)
)
FORM_TABLE: tuple[int, ...] = tuple(form for form, weight in _FORM_WEIGHTS for _ in range(weight))

_ZIPF_EXPONENT = 1.1
#: No sender consents more than this share of the recipients, so every sender
#: keeps recipients without consent (needed for no-consent and DND traffic).
_MAX_SENDER_SHARE = 0.8
_OPTOUT_ONLY_SHARE = 0.05
_DND_SHARE = 0.01
_CHUNK = 65536
_GZIP_LEVEL = 3


class DatasetError(FilterdError):
    """The requested population cannot be built, or a data set directory is unreadable."""


def render_number(national: int, form: int) -> str:
    """Write an 11-digit national mobile number in one of the accepted forms."""
    if form == 0:
        return f"+86{national}"
    if form == 1:
        return str(national)
    if form == 2:
        return f"0086{national}"
    s = str(national)
    if form == 3:
        return f"+86 {s[:3]} {s[3:7]} {s[7:]}"
    if form == 4:
        return f"{s[:3]}-{s[3:7]}-{s[7:]}"
    return f"0{s}"


@dataclass(frozen=True, slots=True)
class SenderSpec:
    """One sender of the population and the progression its rows are drawn from."""

    #: The sender id as written in the CSVs and events.
    id: str
    #: Consent rows (including the ones later opted out).
    consents: int
    #: Recipients who consented and then opted out (the last of the consent rows).
    optouts_consented: int
    #: Recipients who opted out without ever consenting.
    optouts_only: int
    #: Progression step, coprime with the recipient count.
    a: int
    #: Progression offset.
    b: int

    @property
    def span(self) -> int:
        """Positions that have a row in some file; beyond it the sender has no relation."""
        return self.consents + self.optouts_only


@dataclass(frozen=True, slots=True)
class Dataset:
    """A population read back from ``population.json``; see the module docstring."""

    seed: int
    recipients: int
    senders: tuple[SenderSpec, ...]
    map_a: int
    map_b: int
    dnd_count: int
    dnd_a: int
    dnd_b: int
    country_code: str = "86"
    _by_id: dict[str, SenderSpec] = field(init=False, repr=False, compare=False)
    _inverses: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived lookups; object.__setattr__ because the dataclass is frozen.
        object.__setattr__(self, "_by_id", {s.id: s for s in self.senders})
        n = self.recipients
        inv = {s.id: pow(s.a, -1, n) for s in self.senders}
        inv["\0dnd"] = pow(self.dnd_a, -1, n)
        inv["\0map"] = pow(self.map_a, -1, _SUBSCRIBERS)
        object.__setattr__(self, "_inverses", inv)

    def sender(self, sender_id: str) -> SenderSpec | None:
        """The sender with this id, or ``None`` if it is not in the population."""
        return self._by_id.get(sender_id)

    def national(self, r: int) -> int:
        """The 11-digit national number of recipient index ``r``."""
        p = len(MOBILE_PREFIXES)
        return MOBILE_PREFIXES[r % p] * _SUBSCRIBERS + ((r // p) * self.map_a + self.map_b) % (
            _SUBSCRIBERS
        )

    def e164(self, r: int) -> int:
        """The normalized number (E.164 digits as an integer) of recipient index ``r``."""
        return int(self.country_code) * _NATIONAL_SCALE + self.national(r)

    def index_of(self, e164: int) -> int | None:
        """The recipient index of a normalized number, or ``None`` if outside the population."""
        cc, national = divmod(e164, _NATIONAL_SCALE)
        if str(cc) != self.country_code:
            return None
        prefix, sub = divmod(national, _SUBSCRIBERS)
        pi = _PREFIX_INDEX.get(prefix)
        if pi is None:
            return None
        q = ((sub - self.map_b) * self._inverses["\0map"]) % _SUBSCRIBERS
        r = q * len(MOBILE_PREFIXES) + pi
        return r if r < self.recipients else None

    def position(self, spec: SenderSpec, r: int) -> int:
        """Where recipient index ``r`` sits in ``spec``'s progression."""
        return ((r - spec.b) * self._inverses[spec.id]) % self.recipients

    def is_dnd(self, r: int) -> bool:
        """Whether recipient index ``r`` is on the do-not-disturb list."""
        t = ((r - self.dnd_b) * self._inverses["\0dnd"]) % self.recipients
        return t < self.dnd_count

    def dnd_member(self, t: int) -> int:
        """The ``t``-th recipient index on the do-not-disturb list."""
        return (t * self.dnd_a + self.dnd_b) % self.recipients

    def expected(self, sender: str, recipient: int, category: str | None) -> tuple[str, str]:
        """Reference decision ``(route, reason)`` of a valid event under the default policy.

        ``recipient`` is the normalized number. Computed by arithmetic on the
        population, independently of snapshots and bitmaps, so tests can use it
        as the model the router must agree with.
        """
        if category in ("transactional", "verification"):
            return "deliver", "exempt-category"
        spec = self._by_id.get(sender.strip())
        r = self.index_of(recipient)
        if spec is not None and r is not None:
            j = self.position(spec, r)
            if spec.consents - spec.optouts_consented <= j < spec.span:
                return "block", "opted-out"
            if j < spec.consents:
                return "deliver", "consent"
        if spec is None:
            return "block", "unknown-sender"
        if r is not None and self.is_dnd(r):
            return "block", "recipient-dnd"
        return "block", "no-consent"


def _coprime(rng: random.Random, n: int) -> int:
    while True:
        a = rng.randrange(1, n) if n > 2 else 1
        if math.gcd(a, n) == 1:
            return a


def _allocate(total: int, weights: list[float], cap: int) -> list[int]:
    """Split ``total`` into integers proportional to ``weights``, none above ``cap``."""
    alloc = [0.0] * len(weights)
    open_ = [i for i, w in enumerate(weights) if w > 0]
    left = float(total)
    # Water filling: capped senders keep the cap, the excess goes to the others.
    while open_ and left > 0.5:
        wsum = sum(weights[i] for i in open_)
        capped = [i for i in open_ if left * weights[i] / wsum >= cap - alloc[i]]
        if not capped:
            for i in open_:
                alloc[i] += left * weights[i] / wsum
            break
        for i in capped:
            left -= cap - alloc[i]
            alloc[i] = cap
        open_ = [i for i in open_ if i not in set(capped)]
    ints = [min(cap, int(x)) for x in alloc]
    # Hand the rounding remainder to the largest fractions that still have room.
    short = total - sum(ints)
    for i in sorted(range(len(ints)), key=lambda i: ints[i] - alloc[i]):
        if short <= 0:
            break
        if ints[i] < cap and weights[i] > 0:
            ints[i] += 1
            short -= 1
    return ints


def plan_population(senders: int, recipients: int, consents: int, seed: int) -> Dataset:
    """Decide every sender's size and progression; cheap, no rows are produced."""
    if not 1 <= senders <= 100_000:
        raise DatasetError(f"senders must be between 1 and 100000, got {senders}")
    if not 100 <= recipients <= len(MOBILE_PREFIXES) * _SUBSCRIBERS:
        raise DatasetError(
            f"recipients must be between 100 and {len(MOBILE_PREFIXES) * _SUBSCRIBERS}, "
            f"got {recipients}"
        )
    rng = random.Random(seed)
    n_optout_only = int(senders * _OPTOUT_ONLY_SHARE) if senders >= 3 else 0
    n_consenting = senders - n_optout_only
    cap = int(recipients * _MAX_SENDER_SHARE)
    if consents < 0 or consents > n_consenting * cap:
        raise DatasetError(
            f"consents must be between 0 and {n_consenting * cap} for {senders} senders "
            f"and {recipients} recipients, got {consents}"
        )
    n_alpha = min(len(ALPHANUMERIC_SENDERS), max(1, senders // 10))
    ports = [f"1069000{p:05d}" for p in rng.sample(range(100_000), senders - n_alpha)]
    ids = [*ALPHANUMERIC_SENDERS[:n_alpha], *ports]
    rng.shuffle(ids)  # rank order: alphanumeric ids land anywhere in the size ranking
    weights = [1.0 / (rank + 1) ** _ZIPF_EXPONENT for rank in range(n_consenting)]
    sizes = _allocate(consents, weights, cap) + [0] * n_optout_only
    specs = []
    for sid, k in zip(ids, sizes, strict=True):
        if k:
            o = round(k * rng.uniform(0.01, 0.05))
            x = round(k * rng.uniform(0.002, 0.01))
        else:
            o, x = 0, 1 + rng.randrange(max(1, min(500, recipients // 100)))
        specs.append(SenderSpec(sid, k, o, x, _coprime(rng, recipients), rng.randrange(recipients)))
    map_a = _coprime(rng, _SUBSCRIBERS)
    return Dataset(
        seed=seed,
        recipients=recipients,
        senders=tuple(specs),
        map_a=map_a,
        map_b=rng.randrange(_SUBSCRIBERS),
        dnd_count=max(1, int(recipients * _DND_SHARE)),
        dnd_a=_coprime(rng, recipients),
        dnd_b=rng.randrange(recipients),
    )


def _granted_at(spec: SenderSpec) -> str:
    return f"2025-{spec.b % 12 + 1:02d}-{spec.a % 28 + 1:02d}"


def _forms(seed: int) -> list[int]:
    """A shuffled cycle of written forms, so picking a form per row costs one index."""
    forms = list(FORM_TABLE) * 205
    random.Random(seed ^ 0xF0F0).shuffle(forms)
    return forms[:4096]


def _rows(ds: Dataset, spec: SenderSpec, lo: int, hi: int, forms: list[int]) -> Iterator[str]:
    """CSV text for positions ``lo .. hi-1`` of one sender, in chunks."""
    # Locals bound once and Dataset.national inlined: this loop writes every
    # row of the data set, and a method call per row doubles its cost.
    n, a, b, sid = ds.recipients, spec.a, spec.b, spec.id
    ma, mb, p, scale = ds.map_a, ds.map_b, len(MOBILE_PREFIXES), _SUBSCRIBERS
    bases = [prefix * scale for prefix in MOBILE_PREFIXES]
    for start in range(lo, hi, _CHUNK):
        nationals = [
            bases[(r := (j * a + b) % n) % p] + ((r // p) * ma + mb) % scale
            for j in range(start, min(hi, start + _CHUNK))
        ]
        yield "".join(
            f"{sid},{render_number(x, forms[j & 4095])}\n" for j, x in enumerate(nationals, start)
        )


@contextmanager
def _open_gz(path: Path) -> Iterator[io.TextIOWrapper]:
    """A text writer into a gzip file whose bytes depend only on what is written."""
    # mtime=0 and no file name in the gzip header: same seed, same bytes.
    with (
        path.open("wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP_LEVEL
        ) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
    ):
        yield text


def write_dataset(
    out: str | Path,
    *,
    senders: int = 100,
    recipients: int = 100_000,
    consents: int = 300_000,
    seed: int = 1,
) -> Dataset:
    """Write ``consents.csv.gz``, ``optouts.csv.gz``, ``dnd.csv.gz`` and ``population.json``.

    Rows are streamed sender by sender in chunks, so memory does not grow
    with ``consents``. The same arguments always produce the same bytes.
    """
    ds = plan_population(senders, recipients, consents, seed)
    forms = _forms(seed)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    with _open_gz(root / "consents.csv.gz") as f:
        # granted_at is an extra column the contract says builders ignore.
        f.write("sender,recipient,granted_at\n")
        for spec in ds.senders:
            for text in _rows(ds, spec, 0, spec.consents, forms):
                # granted_at: one date per sender, enough to show the column exists.
                f.write(text.replace("\n", f",{_granted_at(spec)}\n"))
    with _open_gz(root / "optouts.csv.gz") as f:
        f.write("sender,recipient\n")
        for spec in ds.senders:
            for text in _rows(ds, spec, spec.consents - spec.optouts_consented, spec.span, forms):
                f.write(text)
    with _open_gz(root / "dnd.csv.gz") as f:
        f.write("recipient\n")
        for start in range(0, ds.dnd_count, _CHUNK):
            stop = min(ds.dnd_count, start + _CHUNK)
            f.write(
                "".join(
                    f"{render_number(ds.national(ds.dnd_member(t)), forms[t & 4095])}\n"
                    for t in range(start, stop)
                )
            )
    doc = {
        "format": POPULATION_FORMAT,
        "seed": seed,
        "params": {"senders": senders, "recipients": recipients, "consents": consents},
        "country_code": ds.country_code,
        "rows": {
            "consents": sum(s.consents for s in ds.senders),
            "optouts": sum(s.optouts_consented + s.optouts_only for s in ds.senders),
            "dnd": ds.dnd_count,
        },
        "recipient_map": {"a": ds.map_a, "b": ds.map_b},
        "dnd": {"count": ds.dnd_count, "a": ds.dnd_a, "b": ds.dnd_b},
        "senders": [
            {
                "id": s.id,
                "consents": s.consents,
                "optouts_consented": s.optouts_consented,
                "optouts_only": s.optouts_only,
                "a": s.a,
                "b": s.b,
            }
            for s in ds.senders
        ],
    }
    (root / "population.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return ds


def load_dataset(directory: str | Path) -> Dataset:
    """Read the population a ``loadgen dataset`` run wrote into ``directory``."""
    path = Path(directory) / "population.json"
    try:
        doc = orjson.loads(path.read_bytes())
        if doc.get("format") != POPULATION_FORMAT:
            raise DatasetError(f"{path}: not a {POPULATION_FORMAT} file")
        return Dataset(
            seed=int(doc["seed"]),
            recipients=int(doc["params"]["recipients"]),
            senders=tuple(
                SenderSpec(
                    str(s["id"]),
                    int(s["consents"]),
                    int(s["optouts_consented"]),
                    int(s["optouts_only"]),
                    int(s["a"]),
                    int(s["b"]),
                )
                for s in doc["senders"]
            ),
            map_a=int(doc["recipient_map"]["a"]),
            map_b=int(doc["recipient_map"]["b"]),
            dnd_count=int(doc["dnd"]["count"]),
            dnd_a=int(doc["dnd"]["a"]),
            dnd_b=int(doc["dnd"]["b"]),
            country_code=str(doc["country_code"]),
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"cannot read data set {path}: {exc}") from exc

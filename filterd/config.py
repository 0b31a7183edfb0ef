"""Configuration: one frozen object, loaded once at start-up.

Values come from a TOML file (see ``config/filterd.toml`` for every key and its
default) and may be overridden by environment variables named
``FILTERD_<SECTION>_<KEY>`` (for example ``FILTERD_KAFKA_BOOTSTRAP_SERVERS``).
Everything is validated here, before anything connects, and a bad value stops
start-up with a :class:`~filterd.errors.ConfigError` naming the key.

Each key's default is stated once, in its dataclass below. A key that takes
one of a few values is typed with a ``Literal``, and that type is the only
list of the allowed values: loading checks a value against it
(:func:`allowed_values`), and a test checks ``config/filterd.toml`` against it.

Environment variables that are not config keys (the supervisor's worker
index, build and test switches, the local broker script's settings) are named
``FILTERD__<NAME>`` (:data:`INTERNAL_ENV_PREFIX`, two underscores): no config
section starts with an underscore, so they can never be read as an override.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from filterd.errors import ConfigError

ENV_PREFIX = "FILTERD_"
#: Prefix of the environment variables that are not config keys (documented in
#: docs/operations.md, "Environment variables"); ignored by :func:`load_config`.
INTERNAL_ENV_PREFIX = "FILTERD__"

#: A message category's rule.
Rule = Literal["require-consent", "exempt"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
#: ``kafka.sasl_mechanism`` (empty without a SASL ``security_protocol``).
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]
#: ``all`` (or its synonym ``-1``) is required for the no-loss guarantee.
Acks = Literal["all", "1", "0", "-1"]
DeliveryMode = Literal["at-least-once", "exactly-once"]
LogFormat = Literal["text", "json"]
#: ``logging.level``, case-insensitive.
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
#: ``[[policy.caps]] per``: what a cap rule counts for, a (sender, recipient) pair or a recipient.
CapPer = Literal["pair", "recipient"]
#: ``[[policy.caps]] window``: the calendar hour or day of the recipient's local time.
CapWindow = Literal["hour", "day"]

DEFAULT_CATEGORY_RULES: Mapping[str, Rule] = types.MappingProxyType(
    {"marketing": "require-consent", "transactional": "exempt", "verification": "exempt"}
)
#: ``[policy] marketing_markers`` by default (docs/contract.md step 2, honest category).
DEFAULT_MARKETING_MARKERS: tuple[str, ...] = (
    "退订", "回T", "回TD", "拒收请回复", "unsubscribe", "reply STOP", "优惠", "折扣", "满减",
    "秒杀", "促销", "特价", "包邮", "领券", "红包",
)  # fmt: skip


def allowed_values(literal: object) -> tuple[str, ...]:
    """The values a ``Literal[...]`` type of this module allows."""
    return typing.get_args(literal)


@dataclass(slots=True, frozen=True)
class KafkaConfig:
    """Connection to the Kafka cluster; security settings go straight to aiokafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "filterd"
    client_id: str = "filterd"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    #: A :data:`SaslMechanism`, with a SASL protocol (checked in ``_validate``).
    sasl_mechanism: str = ""
    sasl_username: str = ""
    #: Never in a repr, so never in a log line, a traceback or a config dump.
    sasl_password: str = field(default="", repr=False)
    #: Read ``sasl_password`` from this file instead (a Kubernetes Secret volume, systemd's
    #: ``LoadCredential=``, a Compose secret); one trailing newline is ignored.
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    request_timeout_ms: int = 30_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000

    def client_options(self) -> dict[str, object]:
        """Keyword arguments shared by every aiokafka client filterd creates."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        if self.security_protocol.endswith("SSL"):
            # Imported lazily: only TLS deployments pay for the ssl module setup.
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile or None,
                certfile=self.ssl_certfile or None,
                keyfile=self.ssl_keyfile or None,
            )
        return options


@dataclass(slots=True, frozen=True)
class TopicsConfig:
    """The input topic and the three output topics every record ends in."""

    input: str = "sms.outbound"
    deliver: str = "sms.deliver"
    block: str = "sms.blocked"
    invalid: str = "sms.invalid"
    #: Live consent changes (compacted, keyed by recipient digits); empty: none, decisions
    #: use the snapshot alone.
    changes: str = "sms.consent-changes"
    #: Replies from recipients (MO messages); keyword replies become changes. Empty: off.
    inbound: str = "sms.inbound"
    #: The compacted changelog of the step 4 counters, one partition per input partition
    #: (``filterd run`` creates it when missing). Empty: ``<input>.counters``.
    counters: str = ""

    @property
    def counters_topic(self) -> str:
        """:attr:`counters`, or its default derived from the input topic."""
        return self.counters or f"{self.input}.counters"


@dataclass(slots=True, frozen=True)
class RepliesConfig:
    """Keywords of MO replies (docs/contract.md "Live consent changes"). A reply matches
    when, after NFKC, trimming white space and trailing punctuation and case folding, it
    equals a keyword (compared folded the same way)."""

    #: Opt-out of the sender the reply went to.
    optout: tuple[str, ...] = (
        "td", "t", "n", "r", "退订", "取消", "拒收", "stop", "unsubscribe", "cancel", "end",
        "quit", "revoke", "opt out", "optout",
    )  # fmt: skip
    #: Opt-out of that sender when the reply contains one of these anywhere.
    optout_contains: tuple[str, ...] = ("退订",)
    #: Opt-out of every sender.
    optout_all: tuple[str, ...] = ("0000", "stopall", "全部退订")
    #: Clear an opt-out of that sender.
    clear: tuple[str, ...] = ("start", "unstop")


@dataclass(slots=True, frozen=True)
class SnapshotConfig:
    """Where consent snapshots live and how often the pointer is checked."""

    root: Path = Path("/var/lib/filterd/snapshots")
    poll_interval_s: float = 5.0
    #: Versions kept by ``filterd snapshot build`` (the current one is never removed).
    keep_versions: int = 5
    #: An Ed25519 public key (PEM): when set, only versions signed with its private key are
    #: used (``filterd snapshot keygen``/``sign``; docs/security.md).
    public_key: str = ""


@dataclass(slots=True, frozen=True)
class CapRule:
    """One ``[[policy.caps]]`` entry (docs/contract.md step 4, ``frequency-cap``).

    Delivered messages of ``categories`` (after step 2) are counted per ``per``
    in the current ``window`` of the recipient's local time; a message that would
    be number ``max + 1`` in its window is blocked.
    """

    categories: tuple[str, ...]
    per: CapPer
    window: CapWindow
    max: int


@dataclass(slots=True, frozen=True)
class PolicyConfig:
    """Which rule each message category follows, and how numbers are read.

    The one policy type: the decision (:class:`filterd.router.Decider`) follows
    it as loaded (``filterd.router.Policy`` is this class).
    """

    #: Country code of national numbers (``13812345678``).
    default_country_code: str = "86"
    #: Larger events are invalid (``oversized``).
    max_event_bytes: int = 65_536
    #: Rule for categories not listed in ``categories`` (and for a missing one
    #: when ``marketing`` is not listed). Fail closed: require consent.
    default_rule: Rule = "require-consent"
    #: category -> rule.
    categories: Mapping[str, Rule] = field(default_factory=lambda: DEFAULT_CATEGORY_RULES)
    #: Exempt-category messages whose text holds one of these (NFKC, case-folded
    #: substring) are decided as marketing. Empty: no such check.
    marketing_markers: tuple[str, ...] = DEFAULT_MARKETING_MARKERS
    #: ``"HH:MM-HH:MM"`` in the recipient's local time: ``require-consent`` messages inside
    #: (start <= t < end, wrapping past midnight when start > end) are blocked as
    #: ``quiet-hours``. Empty: no quiet hours.
    quiet_hours: str = ""
    #: The IANA zone of recipients whose number matches no prefix of ``timezones``.
    timezone: str = "Asia/Shanghai"
    #: Number prefix (country code, or longer) -> IANA zone; the longest match wins.
    timezones: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    #: ``[[policy.caps]]``: frequency caps (see :class:`CapRule`).
    caps: tuple[CapRule, ...] = ()
    #: Block reasons only observed: such a message is delivered with reason ``monitored``
    #: and the header ``filterd-would-block`` (roll a new rule out here first).
    monitor: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class BatchConfig:
    """How much the consumer hands the hot loop at once."""

    #: Upper bound of records per batch (``getmany(max_records=...)``).
    max_records: int = 5_000
    #: How long ``getmany`` waits for records when none are buffered.
    max_wait_ms: int = 100
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 1_048_576
    fetch_max_wait_ms: int = 100
    #: At-least-once: decide the next batch while the previous one's
    #: acknowledgements are on their way (exactly-once is always sequential).
    pipelined: bool = True


@dataclass(slots=True, frozen=True)
class ProducerConfig:
    """Producer tuning for the output topics (see docs/tuning.md)."""

    linger_ms: int = 0
    max_batch_size: int = 1_048_576
    compression_type: CompressionType = "none"
    acks: Acks = "all"
    max_request_size: int = 1_048_576
    enable_idempotence: bool = False


@dataclass(slots=True, frozen=True)
class DeliveryConfig:
    """Delivery guarantee: ``at-least-once`` or ``exactly-once`` (transactions)."""

    mode: DeliveryMode = "at-least-once"
    transaction_timeout_ms: int = 60_000
    #: Prefix of the per-partition transactional ids (exactly-once only).
    transactional_id_prefix: str = "filterd"


@dataclass(slots=True, frozen=True)
class ServiceConfig:
    """Process lifecycle."""

    shutdown_timeout_s: float = 30.0
    startup_timeout_s: float = 60.0
    #: Delay between retries of a batch whose output could not be produced.
    retry_backoff_s: float = 1.0


@dataclass(slots=True, frozen=True)
class MetricsConfig:
    """The HTTP endpoint serving /metrics, /healthz and /readyz."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108
    #: Senders named by ``filterd_frequency_cap_top_sender_blocks`` (0: no such gauge).
    top_capped_senders: int = 20
    #: The window, in seconds, that gauge counts frequency-cap blocks over.
    top_capped_window_s: float = 300.0


@dataclass(slots=True, frozen=True)
class LoggingConfig:
    """Log format (``text`` or ``json``) and level."""

    format: LogFormat = "text"
    #: A :data:`LogLevel`, in any case (checked in ``_validate``).
    level: str = "INFO"


@dataclass(slots=True, frozen=True)
class Config:
    """The whole configuration of one filterd process."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    replies: RepliesConfig = field(default_factory=RepliesConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def shutdown_timeout_s(self) -> float:
        return self.service.shutdown_timeout_s


_SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}
_FIELD_HINTS: dict[str, dict[str, object]] = {
    name: typing.get_type_hints(cls) for name, cls in _SECTIONS.items()
}


def policy_line(policy: PolicyConfig) -> str:
    """The effective policy in one log line (start-up says what it will enforce)."""
    rules = " ".join(f"{name}={rule}" for name, rule in sorted(policy.categories.items()))
    return (
        f"policy ◆ {rules} ◆ any other category: {policy.default_rule} "
        f"◆ country code {policy.default_country_code}"
    )


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at ``path`` (defaults when None), apply environment
    overrides from ``env`` (``os.environ`` when None), validate, and return the
    frozen config. Raises :class:`ConfigError` naming the first bad key."""
    raw: dict[str, object] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"file not found: {path}") from exc
        except IsADirectoryError as exc:
            raise ConfigError("--config", f"{path} is a directory, not a TOML file") from exc
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("--config", f"{path} is not UTF-8 text ({exc.reason})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    merged = _apply_env(raw, os.environ if env is None else env)
    config = _read_secrets(_build(merged))
    _validate(config)
    return config


def _read_secrets(config: Config) -> Config:
    """Fill ``kafka.sasl_password`` from ``kafka.sasl_password_file`` when that is set."""
    k = config.kafka
    if not k.sasl_password_file or not k.security_protocol.startswith("SASL"):
        return config  # A unit or chart may name the file for every deployment.
    key = "kafka.sasl_password_file"
    if k.sasl_password:
        raise ConfigError(key, "set either kafka.sasl_password or kafka.sasl_password_file")
    try:
        with open(k.sasl_password_file, encoding="utf-8") as fh:
            password = fh.read()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {k.sasl_password_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{k.sasl_password_file} is not UTF-8 text") from None
    password = password.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigError(key, f"{k.sasl_password_file} is empty")
    return dataclasses.replace(config, kafka=dataclasses.replace(k, sasl_password=password))


def _apply_env(raw: dict[str, object], env: Mapping[str, str]) -> dict[str, object]:
    merged: dict[str, object] = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(INTERNAL_ENV_PREFIX):
            continue  # FILTERD__<NAME>: not a config key (e.g. FILTERD__WORKER_INDEX).
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # Not a config section: another program's variable.
        key = rest[len(section) + 1 :]
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = _EnvValue(value)
            if typing.get_origin(_FIELD_HINTS[section].get(key)) is Mapping:
                # A table from the environment changes the entries it names and keeps the
                # others: FILTERD_POLICY_CATEGORIES="promo=exempt" must not drop the
                # exemptions of the file or of the defaults.
                target[key] = _merge_table(section, key, raw.get(section), value)
    return merged


def _merge_table(section: str, key: str, file_values: object, text: str) -> dict[str, object]:
    full = f"{section}.{key}"
    base: object = None
    if isinstance(file_values, dict):
        base = file_values.get(key)
    if base is None:
        base = getattr(_SECTIONS[section](), key)
    if not isinstance(base, Mapping):
        raise ConfigError(full, f"expected a table, got {base!r}")
    table: dict[str, object] = dict(base)
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, rule = item.partition("=")
        if not sep:
            raise ConfigError(full, f"expected name=rule pairs, got {item!r}")
        table[name.strip()] = rule.strip()
    return table


class _EnvValue(str):
    """A string that came from the environment and must be coerced to the field type."""


def _build(raw: Mapping[str, object]) -> Config:
    for section in raw:
        if section not in _SECTIONS:
            raise ConfigError(section, f"unknown section [{section}]")
    sections: dict[str, object] = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(name, "must be a table")
        sections[name] = _build_section(name, cls, values)
    return Config(**sections)  # type: ignore[arg-type]


def _build_section(section: str, cls: type, values: Mapping[str, object]) -> object:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, object] = {}
    for key, value in values.items():
        full = f"{section}.{key}"
        if key not in known:
            raise ConfigError(full, "unknown key")
        kwargs[key] = _coerce(full, hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, hint: object, value: object) -> object:
    from_env = isinstance(value, _EnvValue)
    if hint is bool:
        if from_env:
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if hint is int:
        if from_env:
            try:
                return int(str(value).strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if hint is float:
        if from_env:
            try:
                return float(str(value).strip())
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if hint is Path:
        if isinstance(value, str) and value:
            return Path(str(value))
        raise ConfigError(key, f"expected a path, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(key, f"expected a string, got {value!r}")
    if typing.get_origin(hint) is Literal:
        if isinstance(value, str):
            _one_of(key, str(value), allowed_values(hint))
            return str(value)
        raise ConfigError(key, f"expected a string, got {value!r}")
    if hint == tuple[str, ...]:
        # FILTERD_POLICY_MARKETING_MARKERS="退订,回T,unsubscribe" (empty: none)
        if from_env:
            return tuple(p.strip() for p in str(value).split(",") if p.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(key, f"expected an array of strings, got {value!r}")
    if hint == tuple[CapRule, ...]:
        return _caps(key, value)
    if hint == Mapping[str, str]:
        if isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return types.MappingProxyType({str(k): str(v) for k, v in value.items()})
        raise ConfigError(key, f"expected a table of strings, got {value!r}")
    # Mapping[str, Rule]: category -> rule (an environment value is merged into the file's
    # table by _apply_env before it gets here).
    pairs: dict[str, str]
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        pairs = dict(value)
    else:
        raise ConfigError(key, f"expected a table of strings, got {value!r}")
    del from_env
    rule_type = typing.get_args(hint)[1]
    for name, rule in pairs.items():
        _one_of(f"{key}.{name}", rule, allowed_values(rule_type))
    return types.MappingProxyType(pairs)


def _caps(key: str, value: object) -> tuple[CapRule, ...]:
    if isinstance(value, _EnvValue) or not isinstance(value, list):
        raise ConfigError(
            key, f"expected an array of tables ([[{key}]] in the file), got {value!r}"
        )
    rules = []
    hints = typing.get_type_hints(CapRule)
    names = [f.name for f in dataclasses.fields(CapRule)]
    for i, entry in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(at, f"expected a table, got {entry!r}")
        for name in entry:
            if name not in names:
                raise ConfigError(f"{at}.{name}", "unknown key")
        for name in names:
            if name not in entry:
                raise ConfigError(f"{at}.{name}", "missing")
        kwargs = {n: _coerce(f"{at}.{n}", hints[n], entry[n]) for n in names}
        rule = CapRule(**kwargs)  # type: ignore[arg-type]
        if not rule.categories or not all(c.strip() for c in rule.categories):
            raise ConfigError(f"{at}.categories", "must name at least one category, none empty")
        if rule.max < 1:
            raise ConfigError(f"{at}.max", f"must be >= 1, got {rule.max}")
        rules.append(rule)
    return tuple(rules)


_QUIET_HOURS = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])")


def quiet_hours_minutes(text: str) -> tuple[int, int] | None:
    """``[policy] quiet_hours`` as (start, end) minutes of the day; None when empty.

    Raises :class:`ConfigError` on anything but ``HH:MM-HH:MM`` with start != end.
    """
    if not text.strip():
        return None
    found = _QUIET_HOURS.fullmatch(text.strip())
    if found is None:
        raise ConfigError("policy.quiet_hours", f'expected "HH:MM-HH:MM", got {text!r}')
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ConfigError("policy.quiet_hours", f"start and end must differ, got {text!r}")
    return start, end


def _zone(key: str, name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(key, f"unknown time zone {name!r}") from None


def _validate_limits(p: PolicyConfig) -> None:
    from filterd.router import REASONS  # the reason table; router imports this module

    quiet_hours_minutes(p.quiet_hours)
    _zone("policy.timezone", p.timezone)
    for prefix, name in p.timezones.items():
        if not re.fullmatch(r"[1-9][0-9]{0,5}", prefix):
            raise ConfigError(
                f"policy.timezones.{prefix}",
                f"expected a number prefix of 1-6 digits, got {prefix!r}",
            )
        _zone(f"policy.timezones.{prefix}", name)
    for reason in p.monitor:
        if REASONS.get(reason) != "block":
            blocks = ", ".join(r for r, route in REASONS.items() if route == "block")
            raise ConfigError("policy.monitor", f"not a block reason: {reason!r} (one of {blocks})")


_HOST_PORT = re.compile(r"^[^\s,:]+:\d{1,5}$")


def _validate(config: Config) -> None:
    k = config.kafka
    servers = [s.strip() for s in k.bootstrap_servers.split(",")]
    if not servers or not all(_HOST_PORT.match(s) for s in servers):
        raise ConfigError(
            "kafka.bootstrap_servers",
            f"expected host:port[,host:port...], got {k.bootstrap_servers!r}",
        )
    if not k.group_id.strip():
        raise ConfigError("kafka.group_id", "must not be empty")
    if k.security_protocol.startswith("SASL"):
        _one_of("kafka.sasl_mechanism", k.sasl_mechanism, allowed_values(SaslMechanism))
        if not k.sasl_username:
            raise ConfigError("kafka.sasl_username", "required with a SASL security_protocol")
    for name in (
        "request_timeout_ms",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_poll_interval_ms",
    ):
        _positive(f"kafka.{name}", getattr(k, name))
    if k.heartbeat_interval_ms >= k.session_timeout_ms:
        raise ConfigError("kafka.heartbeat_interval_ms", "must be below kafka.session_timeout_ms")

    t = config.topics
    names = {"input": t.input, "deliver": t.deliver, "block": t.block, "invalid": t.invalid,
             "counters": t.counters_topic}  # fmt: skip
    for name, topic in names.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
            raise ConfigError(f"topics.{name}", f"not a valid Kafka topic name: {topic!r}")
    if t.counters_topic in (t.input, t.deliver, t.block, t.invalid):
        raise ConfigError("topics.counters", "must differ from the input and output topics")
    if t.input in (t.deliver, t.block, t.invalid):
        raise ConfigError("topics.input", "must differ from the output topics")
    if len({t.deliver, t.block, t.invalid}) != 3:
        raise ConfigError("topics.deliver", "deliver, block and invalid must be three topics")
    if t.inbound:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", t.inbound):
            raise ConfigError("topics.inbound", f"not a valid Kafka topic name: {t.inbound!r}")
        if t.inbound in (t.input, t.deliver, t.block, t.invalid, t.changes):
            raise ConfigError("topics.inbound", "must differ from the other topics")
        if not t.changes:
            raise ConfigError("topics.inbound", "needs topics.changes (replies become changes)")
    for name in ("optout", "optout_contains", "optout_all", "clear"):
        for word in getattr(config.replies, name):
            if not word.strip():
                raise ConfigError(f"replies.{name}", f"a keyword must not be empty, got {word!r}")
    if t.changes:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", t.changes):
            raise ConfigError("topics.changes", f"not a valid Kafka topic name: {t.changes!r}")
        if t.changes in (t.input, t.deliver, t.block, t.invalid):
            raise ConfigError("topics.changes", "must differ from the input and output topics")

    s = config.snapshot
    _positive("snapshot.poll_interval_s", s.poll_interval_s)
    _positive("snapshot.keep_versions", s.keep_versions)

    p = config.policy
    if not re.fullmatch(r"[1-9][0-9]{0,2}", p.default_country_code):
        raise ConfigError(
            "policy.default_country_code", f"expected 1-3 digits, got {p.default_country_code!r}"
        )
    _positive("policy.max_event_bytes", p.max_event_bytes)
    for marker in p.marketing_markers:
        if not marker.strip():
            raise ConfigError(
                "policy.marketing_markers", f"a marker must not be empty, got {marker!r}"
            )
    _validate_limits(p)

    b = config.batch
    for name in (
        "max_records",
        "max_wait_ms",
        "fetch_max_bytes",
        "max_partition_fetch_bytes",
        "fetch_max_wait_ms",
    ):
        _positive(f"batch.{name}", getattr(b, name))

    pr = config.producer
    if pr.linger_ms < 0:
        raise ConfigError("producer.linger_ms", f"must be >= 0, got {pr.linger_ms}")
    _positive("producer.max_batch_size", pr.max_batch_size)
    _positive("producer.max_request_size", pr.max_request_size)

    d = config.delivery
    _positive("delivery.transaction_timeout_ms", d.transaction_timeout_ms)
    if d.mode == "exactly-once" and pr.acks not in ("all", "-1"):
        raise ConfigError("producer.acks", 'exactly-once mode requires acks = "all"')

    sv = config.service
    _positive("service.shutdown_timeout_s", sv.shutdown_timeout_s)
    _positive("service.startup_timeout_s", sv.startup_timeout_s)
    _positive("service.retry_backoff_s", sv.retry_backoff_s)

    m = config.metrics
    if not 0 <= m.port <= 65535:
        raise ConfigError("metrics.port", f"expected 0-65535, got {m.port}")
    if not 0 <= m.top_capped_senders <= 1000:
        raise ConfigError(
            "metrics.top_capped_senders", f"expected 0-1000, got {m.top_capped_senders}"
        )
    _positive("metrics.top_capped_window_s", m.top_capped_window_s)

    _one_of("logging.level", config.logging.level.upper(), allowed_values(LogLevel))


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"expected one of {', '.join(allowed)}; got {value!r}")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {value}")

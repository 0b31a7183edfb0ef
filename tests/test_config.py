"""Configuration: the sample file, environment overrides, and refusals naming the key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from filterd.config import Config, LogLevel, Rule, SaslMechanism, allowed_values, load_config
from filterd.errors import ConfigError

SAMPLE = Path(__file__).resolve().parent.parent / "config" / "filterd.toml"


def test_sample_file_equals_the_defaults() -> None:
    # The annotated sample documents every key with its default: keep them in step.
    assert load_config(SAMPLE, env={}) == load_config(None, env={})


def test_sample_file_lists_every_key() -> None:
    text = SAMPLE.read_text()
    for section in dataclasses.fields(Config):
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(getattr(Config(), section.name)):
            assert f"\n{key.name} = " in text or f"[{section.name}.{key.name}]" in text, key.name


#: Keys of type str whose values are listed by a Literal checked in _validate.
_CHECKED_STR = {"kafka.sasl_mechanism": SaslMechanism, "logging.level": LogLevel}


def _enumerated_keys() -> dict[str, object]:
    """Every key that takes one of a few values -> its Literal type."""
    keys: dict[str, object] = dict(_CHECKED_STR)
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(typing.get_type_hints(Config)[section.name])
        for name, hint in hints.items():
            if typing.get_origin(hint) is typing.Literal:
                keys[f"{section.name}.{name}"] = hint
            elif typing.get_args(hint)[1:] == (Rule,):
                keys[f"{section.name}.{name}"] = Rule
    return keys


def test_sample_file_lists_the_allowed_values_of_each_enumerated_key() -> None:
    # The comment of such a key starts with its values, "a | b | c".
    comments: dict[str, str] = {}
    section = ""
    for line in SAMPLE.read_text().splitlines():
        head, _, comment = line.partition("#")
        if head.startswith("["):
            section = head.strip().strip("[]")
            if section.count(".") == 1:  # [policy.categories]: the comment is on the table
                comments[section] = comment.partition("->")[2]
        elif "=" in head:
            comments[f"{section}.{head.partition('=')[0].strip()}"] = comment
    keys = _enumerated_keys()
    assert set(keys) >= {"kafka.security_protocol", "producer.acks", "policy.categories"}
    for key, literal in keys.items():
        listed = re.match(r"\s*([^ ]+(?: \| [^ ]+)+)", comments[key])
        assert listed, f"{key}: the sample's comment does not list the allowed values"
        assert tuple(listed.group(1).split(" | ")) == allowed_values(literal), key


@pytest.mark.parametrize("key", sorted(_enumerated_keys()))
def test_enumerated_keys_refuse_other_values(key: str) -> None:
    section, name = key.split(".")
    env = {f"FILTERD_{section}_{name}".upper(): "nonsense"}
    if key == "kafka.sasl_mechanism":
        env["FILTERD_KAFKA_SECURITY_PROTOCOL"] = "SASL_SSL"
    if key == "policy.categories":
        env["FILTERD_POLICY_CATEGORIES"] = "promo=nonsense"
        key = "policy.categories.promo"
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert info.value.key == key
    assert "expected one of" in str(info.value)


def test_internal_variables_are_never_config_keys() -> None:
    # FILTERD__KAFKA_HOME is the local broker script's, not kafka.home.
    env = {"FILTERD__KAFKA_HOME": "/x", "FILTERD__WORKER_INDEX": "1", "FILTERD__LOGGING_X": "1"}
    assert load_config(None, env=env) == load_config(None, env={})


def test_env_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('[kafka]\nbootstrap_servers = "a:1"\n[batch]\nmax_records = 10\n')
    cfg = load_config(
        path,
        env={
            "FILTERD_KAFKA_BOOTSTRAP_SERVERS": "b:2,c:3",
            "FILTERD_METRICS_ENABLED": "false",
            "FILTERD_SNAPSHOT_POLL_INTERVAL_S": "0.5",
            "FILTERD_DELIVERY_MODE": "exactly-once",
            "FILTERD__KAFKA_HOME": "/not/a/config/key",
            "OTHER": "x",
        },
    )
    assert cfg.kafka.bootstrap_servers == "b:2,c:3"
    assert cfg.batch.max_records == 10
    assert cfg.metrics.enabled is False
    assert cfg.snapshot.poll_interval_s == 0.5
    assert cfg.delivery.mode == "exactly-once"
    assert cfg.shutdown_timeout_s == 30.0


@pytest.mark.parametrize(
    ("toml", "env", "key", "words"),
    [
        ('[kafka]\nbootstrap_servers = "nohost"\n', {}, "kafka.bootstrap_servers", "host:port"),
        ("[batch]\nmax_records = 0\n", {}, "batch.max_records", "> 0"),
        ('[batch]\nmax_records = "many"\n', {}, "batch.max_records", "integer"),
        ("", {"FILTERD_BATCH_MAX_RECORDS": "12x"}, "batch.max_records", "'12x'"),
        ('[delivery]\nmode = "twice"\n', {}, "delivery.mode", "exactly-once"),
        ('[producer]\nacks = "1"\n[delivery]\nmode = "exactly-once"\n', {}, "producer.acks", "all"),
        ('[topics]\ndeliver = "sms.blocked"\n', {}, "topics.deliver", "three"),
        ('[topics]\ninput = "bad topic"\n', {}, "topics.input", "topic name"),
        ('[policy.categories]\npromo = "maybe"\n', {}, "policy.categories.promo", "exempt"),
        ('[policy]\ndefault_country_code = "086"\n', {}, "policy.default_country_code", "digits"),
        ("[kafka]\nbogus = 1\n", {}, "kafka.bogus", "unknown key"),
        ("[nope]\n", {}, "nope", "unknown section"),
        ("", {"FILTERD_METRICS_ENABLED": "perhaps"}, "metrics.enabled", "true or false"),
        ("", {"FILTERD_METRICS_PORT": "70000"}, "metrics.port", "65535"),
        (
            '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "GSSAPI"\n',
            {},
            "kafka.sasl_mechanism",
            "SCRAM",
        ),
        ('[logging]\nformat = "xml"\n', {}, "logging.format", "json"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], key: str, words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert info.value.key == key
    assert key in str(info.value)
    assert words in str(info.value)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})


def test_client_options_carry_sasl_settings() -> None:
    cfg = load_config(
        None,
        env={
            "FILTERD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "FILTERD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FILTERD_KAFKA_SASL_USERNAME": "filterd",
            "FILTERD_KAFKA_SASL_PASSWORD": "s3cret",
        },
    )
    options = cfg.kafka.client_options()
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "filterd"
    assert options["sasl_plain_password"] == "s3cret"
    assert "ssl_context" not in options


def test_sasl_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cr3t\n")
    env = {
        "FILTERD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FILTERD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FILTERD_KAFKA_SASL_USERNAME": "filterd",
        "FILTERD_KAFKA_SASL_PASSWORD_FILE": str(secret),
    }
    kafka = load_config(None, env=env).kafka
    assert kafka.sasl_password == "s3cr3t"
    assert "s3cr3t" not in repr(kafka)
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file: set either"):
        load_config(None, env={**env, "FILTERD_KAFKA_SASL_PASSWORD": "x"})
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file: cannot read .*missing"):
        load_config(
            None, env={**env, "FILTERD_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")}
        )
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(None, env=env)


def test_a_categories_override_merges_into_the_table(tmp_path: Path) -> None:
    # The README's own example: it adds promo and keeps the exemptions it does not name.
    env = {"FILTERD_POLICY_CATEGORIES": "marketing=require-consent,promo=exempt"}
    categories = dict(load_config(None, env=env).policy.categories)
    assert categories == {
        "marketing": "require-consent",
        "transactional": "exempt",
        "verification": "exempt",
        "promo": "exempt",
    }
    # ... into the file's table when the file has one; a category can still be made strict.
    path = tmp_path / "f.toml"
    path.write_text('[policy.categories]\nmarketing = "require-consent"\notp = "exempt"\n')
    env = {"FILTERD_POLICY_CATEGORIES": "otp=require-consent,promo=exempt"}
    categories = dict(load_config(path, env=env).policy.categories)
    assert categories == {
        "marketing": "require-consent",
        "otp": "require-consent",
        "promo": "exempt",
    }
    with pytest.raises(ConfigError, match=r"policy\.categories: expected name=rule pairs"):
        load_config(None, env={"FILTERD_POLICY_CATEGORIES": "promo"})


def test_policy_line_states_the_effective_rules() -> None:
    from filterd.config import policy_line

    env = {"FILTERD_POLICY_CATEGORIES": "promo=exempt"}
    assert policy_line(load_config(None, env=env).policy) == (
        "policy ◆ marketing=require-consent promo=exempt transactional=exempt "
        "verification=exempt ◆ any other category: require-consent ◆ country code 86"
    )

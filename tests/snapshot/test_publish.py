"""Publishing guards, staged publishing, keep_versions from the config, the country code.

Each test reproduces an operator's everyday mistake that used to change decisions silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.errors import SnapshotError
from filterd.snapshot import build_snapshot, load_snapshot
from filterd.snapshot import format as fmt
from filterd.snapshot.publish import PublishRefused, publish_version
from tests.support.stream import run_cli

from .data import write_csv


def _consents(tmp_path: Path, n: int, name: str = "c.csv") -> Path:
    rows = [("shop", f"138{i:08d}") for i in range(n)]
    return write_csv(tmp_path / name, ["sender", "recipient"], rows)


def test_header_only_export_is_not_published(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    good = build_snapshot(root, _consents(tmp_path, 100))
    empty = write_csv(tmp_path / "empty.csv", ["sender", "recipient"], [])
    proc = run_cli("snapshot", "build", "--consents", str(empty), "--out", str(root))
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    built = [v for v in fmt.list_versions(root) if v != good]
    assert line == (
        f"filterd: error: not published: version {built[0]} is empty (0 consents, 0 opt-outs): "
        "a header-only or truncated export?"
    )
    assert fmt.current_version(root) == good  # left alone


def test_truncated_optouts_are_not_published(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    consents = _consents(tmp_path, 100)
    full = write_csv(tmp_path / "o.csv", ["sender", "recipient"],
                     [("shop", f"139{i:08d}") for i in range(1000)])  # fmt: skip
    cut = write_csv(tmp_path / "o2.csv", ["sender", "recipient"],
                    [("shop", f"139{i:08d}") for i in range(300)])  # fmt: skip
    good = build_snapshot(root, consents, full)
    with pytest.raises(PublishRefused) as err:
        build_snapshot(root, consents, cut)
    assert "opt-outs dropped by 70% (1,000 -> 300)" in str(err.value)
    assert f"against {good} in force (--max-drop 0.5)" in str(err.value)
    assert err.value.exit_code == 3
    assert fmt.current_version(root) == good
    (kept,) = [v for v in fmt.list_versions(root) if v != good]
    # Staged: after checking (replay --compare), publish the kept version deliberately.
    with pytest.raises(PublishRefused):
        publish_version(root, kept)
    publish_version(root, kept, max_drop=0.8)
    assert fmt.current_version(root) == kept


def test_force_and_no_publish(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    first = build_snapshot(root, _consents(tmp_path, 100))
    staged = run_cli("snapshot", "build", "--consents", str(_consents(tmp_path, 10, "s.csv")),
                  "--out", str(root), "--no-publish")  # fmt: skip
    assert staged.returncode == 0, staged.stderr
    version = staged.stdout.strip()
    assert fmt.current_version(root) == first
    refused = run_cli("snapshot", "publish", str(root), version)
    assert refused.returncode == 3
    assert "consents dropped by 90% (100 -> 10)" in refused.stderr
    forced = run_cli("snapshot", "publish", str(root), version, "--force")
    assert forced.returncode == 0, forced.stderr
    assert fmt.current_version(root) == version


def test_build_honours_keep_versions_from_the_config(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    config = tmp_path / "f.toml"
    config.write_text("[snapshot]\nkeep_versions = 2\n")
    consents = _consents(tmp_path, 10)
    for _ in range(4):
        proc = run_cli("snapshot", "build", "--consents", str(consents), "--out", str(root),
                    "--config", str(config))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert len(fmt.list_versions(root)) == 2
    proc = run_cli("snapshot", "build", "--consents", str(consents), "--out", str(root),
                "--config", str(config), "--keep", "4")  # fmt: skip
    assert len(fmt.list_versions(root)) == 3  # --keep overrides; nothing built comes back


def test_a_snapshot_for_another_country_code_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    version = build_snapshot(root, _consents(tmp_path, 10), country_code="86")
    assert load_snapshot(root).summary()["country_code"] == "86"
    load_snapshot(root, country_code="86")
    with pytest.raises(SnapshotError) as err:
        load_snapshot(root, country_code="91")
    assert str(err.value) == (
        f"version {version} was built for country code 86, this filterd reads national "
        "numbers as 91 ([policy] default_country_code): rebuild it with --country-code 91, "
        "or fix the config"
    )
    config = tmp_path / "f.toml"
    config.write_text('[policy]\ndefault_country_code = "91"\n')
    events = tmp_path / "e.jsonl"
    events.write_text('{"id":"1","sender":"shop","recipient":"13800000001"}\n')
    proc = run_cli("replay", "--snapshot", str(root), "--input", str(events), "--out",
                str(tmp_path / "out"), "--config", str(config))  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"filterd: error: {err.value}"
    # The build reads the code from the config too.
    proc = run_cli("snapshot", "build", "--consents", str(_consents(tmp_path, 10)), "--out",
                str(tmp_path / "snap91"), "--config", str(config))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert load_snapshot(tmp_path / "snap91").summary()["country_code"] == "91"


async def test_the_watcher_keeps_nothing_built_for_another_code(tmp_path: Path) -> None:
    import gc

    from filterd.snapshot import SnapshotWatcher

    root = tmp_path / "snap"
    version = build_snapshot(root, _consents(tmp_path, 10), country_code="86")
    refused: list[str] = []
    watcher = SnapshotWatcher(
        root, 60, country_code="91", on_refused=lambda v, e: refused.append(str(e))
    )
    try:
        await watcher.check()
    finally:
        gc.unfreeze()
    assert watcher.current is None  # fail closed: nothing in force, nothing consumed
    assert refused == [
        f"version {version} was built for country code 86, this filterd reads national "
        "numbers as 91 ([policy] default_country_code): rebuild it with --country-code 91, "
        "or fix the config"
    ]


def test_staged_workflow_compares_an_unpublished_version(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    build_snapshot(root, _consents(tmp_path, 100))
    staged = run_cli("snapshot", "build", "--consents", str(_consents(tmp_path, 40, "s.csv")),
                  "--out", str(root), "--no-publish")  # fmt: skip
    new = staged.stdout.strip()
    events = tmp_path / "e.jsonl"
    events.write_text(
        "".join(f'{{"id":"{i}","sender":"shop","recipient":"138{i:08d}"}}\n' for i in range(100))
    )
    proc = run_cli("replay", "--snapshot", str(root), "--input", str(events), "--out",
                str(tmp_path / "cmp"), "--compare", str(root / new))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    changes = (tmp_path / "cmp" / "changes.jsonl").read_text().splitlines()
    assert len(changes) == 60  # consents 40..99 are gone in the staged version

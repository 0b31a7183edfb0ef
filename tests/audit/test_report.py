"""The HTML report: self-contained, escaped, and rendered by a real headless browser."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from filterd.audit.aggregate import Summary
from filterd.audit.reasons import BLOCK_REASONS
from filterd.audit.report import ReportMeta, render_report
from filterd.audit.timeutil import HourBuckets, TimeRange

from .clihelp import run_cli, write_config
from .streams import BASE_MS, HOUR_MS, Routed, generate, produce
from .test_aggregate import as_audit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BOMBER = "<b>bomber</b>"


def with_bomber(seed: int) -> list[Routed]:
    """Six hours of steady traffic, then one sender (with an id that needs escaping)
    sends 600 blocked messages within one hour."""
    steady = generate(6000, seed=seed, step_ms=4_000)
    burst = generate(
        600,
        seed=seed + 1,
        step_ms=5_000,
        senders=1,
        prefix="b",
        start_ms=BASE_MS + 5 * HOUR_MS + 1000,
    )
    renamed = [
        Routed(
            r.route,
            r.reason,
            r.snapshot,
            r.source,
            r.ts_ms,
            r.key,
            r.value.replace(b'"sender":"106900000"', f'"sender":"{BOMBER}"'.encode()).replace(
                b'"sender":" 106900000 "', f'"sender":"{BOMBER}"'.encode()
            ),
            r.id,
            BOMBER,
            r.recipient,
            r.category,
        )
        for r in burst
    ]
    return sorted(steady + renamed, key=lambda r: r.ts_ms)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "srcset")]


def test_report_is_self_contained_and_escaped() -> None:
    summary = Summary(HourBuckets(), sender_hours=True)
    summary.add_batch(as_audit(with_bomber(41)))
    meta = ReportMeta(["sms.blocked"], TimeRange(None, None), HourBuckets().tz, "UTC", BASE_MS)
    page = render_report(summary, meta)
    parser = _Refs()
    parser.feed(page)
    assert parser.refs == []
    assert "url(" not in page
    assert "@import" not in page
    assert "default-src 'none'" in page
    assert BOMBER not in page  # escaped everywhere
    assert page.count("&lt;b&gt;bomber&lt;/b&gt;") >= 2  # top senders and the burst table
    bursts = page.split("Senders whose block rate jumped")[1].split("Snapshot versions")[0]
    assert "&lt;b&gt;bomber&lt;/b&gt;" in bursts
    assert "106900001" not in bursts  # steady senders are not flagged
    assert parser.tags.count("svg") == 3


def test_empty_report_renders() -> None:
    meta = ReportMeta(["sms.blocked"], TimeRange(0, 1), HourBuckets().tz, "UTC", BASE_MS)
    page = render_report(Summary(HourBuckets(), sender_hours=True), meta)
    assert "<td>blocked</td><td class=num>0</td>" in page
    assert "No record was found in the period." in page
    assert "No sender's block rate jumped" in page


def headless(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def console_lines(stderr: str) -> list[str]:
    # Page console messages and uncaught errors, incl. CSP violations, are logged as
    # ...:INFO:CONSOLE(...)] or ...:INFO:CONSOLE:NN] lines with --enable-logging.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)")
async def test_report_renders_in_a_headless_browser(
    kafka_bootstrap: str, new_topic, tmp_path: Path
) -> None:
    topic, deliver, invalid = [await new_topic(partitions=3) for _ in range(3)]
    # Every block reason there is, so the per-reason tables are as wide as they get.
    blocks = [
        dataclasses.replace(r, reason=BLOCK_REASONS[i % len(BLOCK_REASONS)])
        for i, r in enumerate(with_bomber(42))
    ]
    await produce(kafka_bootstrap, topic, blocks)
    delivered = generate(3000, seed=43, step_ms=8_000, route="deliver")
    await produce(kafka_bootstrap, deliver, delivered)
    invalids = generate(200, seed=44, step_ms=100_000, route="invalid")
    await produce(kafka_bootstrap, invalid, invalids)
    config = str(
        write_config(
            tmp_path / "f.toml", kafka_bootstrap, block=topic, deliver=deliver, invalid=invalid
        )
    )
    report = tmp_path / "report.html"
    assert (
        await run_cli("audit", "report", "--config", config, "--out", str(report), "--tz", "+08:00")
        == 0
    )
    page = report.read_text()
    # The denominators: every sender's delivered count, read from the deliver topic.
    rates = page[page.index('<table class="rates">') :].split("</table>")[0]
    expected = Counter(r.sender for r in delivered)
    for sender, count in expected.most_common(3):
        assert re.search(rf"<td>{sender}</td><td class=num>{count:,}</td>", rates), sender
    assert f"<td>all 21 senders</td><td class=num>{len(delivered):,}</td>" in rates
    # Invalid messages are counted apart, never in the block totals.
    section = page[page.index("Invalid messages (apart") :].split("</section>")[0]
    malformed = sum(1 for r in invalids if r.reason == "malformed-json")
    assert f"<td>malformed-json</td><td class=num>{malformed:,}</td>" in section
    assert "malformed-json" not in page[: page.index("Invalid messages (apart")]
    # Every block reason includes frequency-cap and quiet-hours: the limits' tables are filled.
    bombing = page[page.index("<h2>Bombing blocked</h2>") :].split("</section>")[0]
    assert bombing.count("<table>") == 3  # recipients, pairs, hours (no monitored deliveries)

    dom = headless(report.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None
    assert 'data-rendered="ok"' in body.group(0)
    assert 'data-charts="3"' in body.group(0)  # reasons over time, top senders, one sparkline
    assert dom.stdout.count('class="bar"') > 50
    assert console_lines(dom.stderr) == []

    shot = tmp_path / "report.png"
    run = headless(
        report.as_uri(),
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1100,2000",
        "--hide-scrollbars",
    )
    assert run.returncode == 0
    assert shot.stat().st_size > 20_000  # a blank page is a few kB
    # At print width (A4 at 96 dpi): nothing wider than the page.
    dom = headless(report.as_uri(), tmp_path / "profile", "--dump-dom", "--window-size=794,1123")
    assert 'data-overflow="0"' in dom.stdout, dom.stdout[:500]

    # The checks can fail: a page with a script error is caught by both.
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace("</body>", "<script>nope()</script></body>"))
    dom = headless(broken.as_uri(), tmp_path / "profile", "--dump-dom")
    assert 'data-rendered="error"' in dom.stdout
    assert any("nope" in line for line in console_lines(dom.stderr))


def test_burst_list_is_capped_at_top() -> None:
    summary = Summary(HourBuckets(), sender_hours=True)
    assert summary.sender_hours is not None
    for n in range(5):
        sender = f"bomber-{n}"
        summary.sender_hours[sender] = Counter({10: 1, 11: 100 + n})
        summary.by_hour.update({10: 1, 11: 100 + n})
    meta = ReportMeta(["b"], TimeRange(None, None), HourBuckets().tz, "UTC", BASE_MS, top=3)
    page = render_report(summary, meta)
    bursts = page.split("Senders whose block rate jumped")[1]
    assert [f"bomber-{n}" in bursts for n in range(5)] == [False, False, True, True, True]
    assert "2 more senders jumped" in bursts

"""Tools for auditors: read the block topic for a time range and account for it.

``filterd audit summary`` counts blocks by reason, sender, hour and snapshot
version; ``export`` writes the evidence file for a case, with recipients
masked by default; ``why`` finds one message by id and re-decides it against
the snapshot version that decided it; ``report`` renders a self-contained
HTML report. Everything reads without a consumer group and commits nothing,
so an audit never disturbs the service or another audit.
"""

from __future__ import annotations

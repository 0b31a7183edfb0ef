"""Synthetic carrier traffic: a consent population and SMS events against it.

``filterd loadgen`` writes a data set (snapshot input CSVs plus
``population.json``) and generates or produces events against it, all
deterministic from a seed. The pure API (:func:`write_dataset`,
:func:`load_dataset`, :func:`iter_events`, :func:`iter_labelled_events`) is
what tests and benchmarks call; :func:`filterd.loadgen.produce.produce_events`
sends records to Kafka (imported from its module, so aiokafka is loaded only
when needed).
"""

from __future__ import annotations

from filterd.loadgen.dataset import Dataset, DatasetError, load_dataset, write_dataset
from filterd.loadgen.events import (
    BAD_KINDS,
    DEFAULT_MIX,
    LabelledEvent,
    iter_events,
    iter_labelled_events,
    parse_mix,
)

__all__ = [
    "BAD_KINDS",
    "DEFAULT_MIX",
    "Dataset",
    "DatasetError",
    "LabelledEvent",
    "iter_events",
    "iter_labelled_events",
    "load_dataset",
    "parse_mix",
    "write_dataset",
]

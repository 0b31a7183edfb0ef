"""The test harness, one copy of each piece, imported by tests and benchmarks alike.

- ``reference``: the independent reference model of the contract (stdlib only).
- ``kafka``: topics, draining and offsets of the real broker.
- ``produce``: the one input producer, keyed records partitioned as Kafka's default does.
- ``check``: the one output checker (every output against its input and the model).
- ``stream``: a service under test with its own topics, group and snapshot root.

Tests import it as ``tests.support`` (pytest's ``pythonpath``); benchmarks and the chaos
suites run as modules from the repository root (``python -m benchmarks.e2e``) and import
it the same way.
"""

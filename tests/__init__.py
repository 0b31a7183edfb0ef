"""filterd's test suite; ``tests.support`` is the harness that tests and benchmarks share."""

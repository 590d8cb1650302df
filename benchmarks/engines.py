"""Seconds per round of flwr-byz's engines against a plain torch loop of the same math.

A thin script (`make bench-engines`, benchmarks/README.md): the suite is the installed module
``flwr_byz.bench.engines`` (``python -m flwr_byz.bench.engines``)."""

from flwr_byz.bench.engines import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Speed and peak-memory benchmark: flwr_byz aggregators vs Flower and ByzFL.

A thin script (`make bench`, benchmarks/README.md): the suite is the installed module
``flwr_byz.bench.aggregators`` (``python -m flwr_byz.bench.aggregators``)."""

from flwr_byz.bench.aggregators import main

if __name__ == "__main__":
    raise SystemExit(main())

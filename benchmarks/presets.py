"""Seconds per round of each preset (flwr-byz run --preset) on stand-in data of its shapes.

A thin script (benchmarks/README.md): the suite is the installed module
``flwr_byz.bench.presets`` (``python -m flwr_byz.bench.presets``)."""

from flwr_byz.bench.presets import main

if __name__ == "__main__":
    main()

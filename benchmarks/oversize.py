"""Cost of rejecting an oversize reply (time and memory of ``validate_replies``).

A thin script (benchmarks/README.md): the suite is the installed module
``flwr_byz.bench.oversize`` (``python -m flwr_byz.bench.oversize``)."""

from flwr_byz.bench.oversize import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmarks, installed with the package: ``python -m flwr_byz.bench.<suite>`` or
``flwr-byz bench <suite>``. Each suite writes its results where ``--out`` says (default:
``benchmarks/results/`` under the current directory); nothing here reads the source checkout.

Suites (entry points, each with ``main(argv) -> int``):

* :mod:`.aggregators`: our aggregators against Flower's and ByzFL's, speed and peak memory;
* :mod:`.engines`: seconds per round of the engines against a plain torch loop;
* :mod:`.oversize`: the cost of refusing an oversize reply.

The aggregator benchmark's parts: :mod:`.measure` (timing and peak memory), :mod:`.baselines`
(Flower's and ByzFL's implementations), :mod:`.compare` (one size: ours against the
baselines), :mod:`.report` (JSON, tables and error lines, shared with the engine benchmark) and
:mod:`.machine` (the machine description). The engine benchmark's: :mod:`.engine_setup` (what
runs), :mod:`.plain` (the plain loop), :mod:`.engine_runs` (the cells and ratios).

The package imports none of its modules: a suite run with ``python -m`` is imported once.
"""

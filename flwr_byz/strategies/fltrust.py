"""FLTrust: Flower's FedAvg with the aggregation bootstrapped by the server's own update on a
small clean root data set (Cao, Fang, Liu & Gong, NDSS 2021, Alg. 1; docs/ALGORITHMS.md,
FLTrust)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from ..aggregators.fltrust import FLTrustRule, fltrust_with_scores
from ..methods import fedavg
from ..methods.fedavg import FedAvgState
from ..protocol.metrics import count_byzantine
from ..protocol.records import flatten, layout_of, unflatten
from .robust_fedavg import RobustFedAvg, _Sent
from .validation import CheckedReplies

__all__ = ["FLTrust", "RootTrainFn"]

#: ``root_train_fn(server_round, arrays, config) -> ArrayRecord``: the model ``arrays`` sent
#: this round trained on the server's root data set (``config``: the round's train config,
#: what the clients get, e.g. ``lr``).
RootTrainFn = Callable[[int, ArrayRecord, ConfigRecord], ArrayRecord]

#: The round's train metrics FLTrust adds (besides RobustFedAvg's validation counts).
TRUST_ZERO_KEY = "trust-zero"  # accepted updates with trust score 0 (left out)
TRUST_MEAN_KEY = "trust-mean"
TRUST_MIN_KEY = "trust-min"
TRUST_MAX_KEY = "trust-max"
TRUST_BYZANTINE_KEY = "trust-byzantine"  # mean score of the replies marked Byzantine
REFERENCE_NORM_KEY = "reference-norm"  # ||g_0|| over the floating-point arrays

#: RobustFedAvg's arguments FLTrust fixes (its rule is FLTrust's, of the floating arrays).
_FIXED = ("aggregator", "f", "weighted", "clip_alpha")


class FLTrust(RobustFedAvg):
    """FLTrust (Cao et al., NDSS 2021, Alg. 1) as a drop-in Flower strategy.

    Each round the server trains the model it sent on its own small clean root data set
    (``root_train_fn``); the reference update ``g_0 = root model - model sent`` gives every
    client update ``g_i = reply - model sent`` the trust score ``TS_i = ReLU(cos(g_i, g_0))``
    (Eq. 2), each ``g_i`` is rescaled to ``||g_0||`` (Eq. 3) and the step is their
    trust-weighted mean (Eq. 4; ``flwr_byz.aggregators.fltrust``), added to the model (the
    paper's global learning rate is 1, as in FedAvg). When every score is 0 the model is kept
    (the zero step). The rule runs on the floating-point arrays; integer arrays (e.g.
    BatchNorm's ``num_batches_tracked``) take the server's own update.

    Parameters
    ----------
    root_train_fn : RootTrainFn
        ``root_train_fn(server_round, arrays, config) -> ArrayRecord``: trains ``arrays`` (the
        model sent this round) on the root data set, as the clients train (the paper: the same
        local epochs, batch size and learning rate), and returns the trained model with the
        same keys, shapes and dtypes. ``config`` is the round's train config (what the clients
        receive, ``server-round`` included). The paper's root set: 100 clean examples.
    **kwargs
        Every keyword argument of ``flwr.serverapp.strategy.FedAvg`` (``fraction_train``,
        ``min_train_nodes``, ``arrayrecord_key``, ...). RobustFedAvg's ``aggregator``, ``f``,
        ``weighted`` and ``clip_alpha`` are refused: the rule is FLTrust's.

    Replies are validated as by ``RobustFedAvg``. Each round's train MetricRecord carries
    RobustFedAvg's counts plus ``trust-zero`` (accepted updates with score 0), ``trust-mean``,
    ``trust-min``, ``trust-max``, ``reference-norm`` and, when replies carry
    ``byzantine_mod``'s mark, ``trust-byzantine`` (the mean score of the marked ones).
    ``device`` (attribute): where the rule runs, as for RobustFedAvg; ``root_train_fn``
    chooses its own device.
    """

    def __init__(self, root_train_fn: RootTrainFn, **kwargs: Any) -> None:
        fixed = sorted(k for k in _FIXED if k in kwargs)
        if fixed:
            raise ValueError(
                f"FLTrust takes no {fixed}: its rule is FLTrust's trust-weighted mean (use "
                "RobustFedAvg for another rule)"
            )
        if not callable(root_train_fn):
            raise TypeError(
                "root_train_fn must be a callable (server_round, arrays, config) -> ArrayRecord "
                f"that trains the model on the server's root data set, got {root_train_fn!r}"
            )
        super().__init__(aggregator=FLTrustRule(), **kwargs)  # type: ignore[arg-type]
        self.root_train_fn = root_train_fn
        self._config: dict[str, Any] | None = None  # the round's train config (until used)
        self._trust: dict[str, float | int] = {}  # the round's trust metrics (until reported)

    def summary(self) -> None:
        """Log the rule and the root training, then FedAvg's summary."""
        log(INFO, "\t├──> FLTrust (Cao et al. 2021):")
        log(INFO, "\t│\t└── Root training: %s", getattr(self.root_train_fn, "__name__", "?"))
        super(RobustFedAvg, self).summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """RobustFedAvg's configuration; remembers the round's train config for the root
        training."""
        messages = super().configure_train(server_round, arrays, config, grid)
        self._config = dict(config)  # FedAvg added server-round
        return messages

    def reference(self, sent: _Sent) -> torch.Tensor:
        """``g_0 = root_train_fn(model sent) - model sent`` ``[d]`` (all coordinates).

        ``ValueError`` when the root model does not have the sent model's keys, shapes and
        dtypes, or is not finite."""
        config = ConfigRecord(self._config or {"server-round": sent.server_round})
        self._config = None
        root = self.root_train_fn(sent.server_round, unflatten(sent.vector, sent.layout), config)
        if not isinstance(root, ArrayRecord):
            raise TypeError(f"root_train_fn must return an ArrayRecord, got {type(root).__name__}")
        want, have = sent.layout.spec(), layout_of(root).spec()
        if want != have:
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise ValueError(
                f"root_train_fn returned a model unlike the one sent: arrays {diff[:5]} differ "
                f"(sent {[want.get(k) for k in diff[:5]]}, got {[have.get(k) for k in diff[:5]]})"
            )
        g0 = flatten(root, sent.layout) - sent.vector
        if not bool(torch.isfinite(g0).all()):
            raise ValueError(
                "root_train_fn returned a model with NaN/Inf values: check the server's "
                "training on the root data set (its learning rate)"
            )
        return g0

    def _robust_step(
        self, checked: CheckedReplies, sent: _Sent, context: str
    ) -> torch.Tensor | None:
        """The FLTrust step, or None (previous model kept) when no reply is left or the step
        is not finite; the trust scores go into ``self._trust`` for the round's metrics."""
        self._trust = {}
        if not len(checked.node_ids):
            log(WARNING, "%s: keeping the previous global model: no valid reply", context)
            return None
        g0 = self.reference(sent)
        mask = sent.layout.floating_mask()
        device = self.device

        def aggregate(updates: torch.Tensor) -> torch.Tensor | None:
            step = g0.to(updates.dtype).clone()  # integer arrays: the server's own update
            rows, ref = updates[:, mask], g0[mask]
            if device is not None:
                rows, ref = rows.to(device), ref.to(device)
            try:
                agg, scores = fltrust_with_scores(rows, ref)
            except ValueError as exc:  # e.g. updates that overflow: as RobustFedAvg does
                log(WARNING, "%s: keeping the previous global model: %s", context, exc)
                return None
            step[mask] = agg.to(step.device)
            self._trust = _summary(scores.cpu(), float(torch.linalg.vector_norm(ref)), checked)
            return step

        state, stats = fedavg.server_step(FedAvgState(sent.vector), checked.vectors, aggregate)
        if stats["non_finite"]:
            log(WARNING, "%s: keeping the previous global model: non-finite aggregate", context)
        if stats["skipped"]:
            return None
        log(
            INFO,
            "%s: trust scores mean %.3g, %d of %d zero",
            context,
            self._trust[TRUST_MEAN_KEY],
            int(self._trust[TRUST_ZERO_KEY]),
            len(checked.node_ids),
        )
        self._last_update = state.last_update
        return state.last_update

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """RobustFedAvg's validation and metrics, FLTrust's step, the trust summary."""
        self._trust = {}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            for key, value in self._trust.items():
                metrics[key] = value
        self._trust = {}
        return arrays, metrics


def _summary(
    scores: torch.Tensor, ref_norm: float, checked: CheckedReplies
) -> dict[str, float | int]:
    """The round's trust metrics from the scores ``[n]`` of the accepted replies."""
    out: dict[str, float | int] = {
        TRUST_ZERO_KEY: int((scores == 0).sum()),
        TRUST_MEAN_KEY: float(scores.mean()),
        TRUST_MIN_KEY: float(scores.min()),
        TRUST_MAX_KEY: float(scores.max()),
        REFERENCE_NORM_KEY: ref_norm,
    }
    marks = torch.tensor([count_byzantine(c) == 1 for c in checked.contents], dtype=torch.bool)
    if bool(marks.any()):
        out[TRUST_BYZANTINE_KEY] = float(scores[marks].mean())
    return out

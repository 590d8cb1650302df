"""GradientClient: the client step of every method strategy, as a Flower ClientApp.

The user plugs in their own model, loss and data::

    client = GradientClient(
        model_fn=lambda config: Net(),                       # a fresh torch.nn.Module
        loss_fn=lambda model, x, y: F.cross_entropy(model(x), y),
        data_fn=lambda context, config: load_partition(context),   # (x, y) tensors
    )
    app = client.app                                          # the ClientApp to serve

Each train Message names an ``op`` in its ConfigRecord ``"config"`` and carries the point(s) as
ArrayRecords (``"arrays"``: the model x; ``"prev"``: the previous model). The ops:

- ``grad``: the gradient of the mean loss at ``arrays`` over a minibatch of ``batch-size``
  samples drawn with ``batch-seed`` (``batch-size`` 0: the whole local data) -> ``"grad"``.
- ``grad_diff``: the gradient difference between ``arrays`` and ``prev`` on the SAME minibatch,
  compressed with ``compressor`` (a ``flwr_byz.compressors`` spec) and ``compressor-seed``
  -> ``"payload"`` (the compressor's wire payload; Byz-VR-MARINA-PP).
- ``momentum``: the minibatch gradient at ``arrays`` folded into the client's worker momentum
  ``m = beta m + (1 - beta) grad`` (``beta``; the first step sets ``m = grad``), which is kept
  in ``context.state`` -> ``"grad"`` holding m (RobustMomentum).
  With ``ef21-version`` in the config (Byz-EF21-SGDM, Liu et al. 2024), the momentum v = m is
  sent through EF21 error feedback instead: the client keeps g (the server's copy of it) and
  replies ``"payload"`` = ``C(v - g)`` with ``compressor``, then ``g += C(v - g)``. See
  :meth:`GradientClient.error_feedback` for the version handshake that keeps both copies of g
  equal when a reply is lost or rejected.
- ``grad`` with a ``compressor`` in the config replies ``"payload"`` = ``C(grad)`` (BR-CSGD).
- ``double``: mu2-SGD's corrected momentum ``d = grad f(x_t; z) + (1 - beta)(d - grad f(x_prev;
  z))`` on one minibatch z at ``arrays`` and at the client's previous point (both kept in
  ``context.state``) -> ``"grad"`` holding d (Mu2SGD).
- ``byzsgd``: the servers' models arrive as ``model-0``, ``model-1``, ...; the worker takes
  their coordinate-wise median or, in ByzSGD's synchronous variant, the first that passes its
  Lipschitz and Outliers filters, and returns the minibatch gradient there -> ``"grad"``
  (ByzSGD; ``flwr_byz.clients.byzsgd``).

Gradients are vectors over the model's floating-point arrays, in state-dict order (arrays with
no gradient, e.g. BatchNorm statistics, are zero). Every reply also carries a MetricRecord
``"metrics"`` with ``train-loss`` and ``num-examples`` (the local data size). Per-run state in
``context.state`` is namespaced by the strategy's ``state-key``; a new key drops the old state.
A data attack (LabelFlip, see ``label_flip_requested``) flips the labels before the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import nn

from ..attacks import LabelFlip
from ..compressors import get_compressor
from ..strategies.records import Layout, flatten, layout_of, payload_record, unflatten
from ..strategies.updates import momentum_update
from .byzsgd import worker_step
from .mods import label_flip_requested
from .state import drop, load_count, load_vector, store_count, store_vector

__all__ = ["OPS", "GradientClient"]

ModelFn = Callable[[dict[str, Any]], nn.Module]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
DataFn = Callable[[Context, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]

OPS = ("grad", "grad_diff", "momentum", "double", "byzsgd")
"""The ops GradientClient answers."""


class GradientClient:
    """Builds the ClientApp (``.app``) that answers the method strategies' ops (module doc).

    Parameters
    ----------
    model_fn : (config) -> nn.Module
        A fresh model; ``config`` is the message's ConfigRecord as a dict (ignore it if the
        model is fixed). Its state dict must match the arrays the server sends.
    loss_fn : (model, x, y) -> scalar Tensor
        The mean loss of a batch (add regularisation here if the objective has one).
    data_fn : (context, config) -> (x, y)
        This node's local training data (cache it yourself if loading is slow).
    num_classes : int | None
        For LabelFlip (``y' = C - 1 - y``); None: the width of the model's output.
    mods : Sequence[Mod]
        Flower client mods for the app (e.g. ``flwr_byz.clients.byzantine_mod``).
    device : str | torch.device
        Where the model runs.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        loss_fn: LossFn,
        data_fn: DataFn,
        num_classes: int | None = None,
        mods: Sequence[Mod] = (),
        device: str | torch.device = "cpu",
    ) -> None:
        self.model_fn = model_fn
        self.loss_fn = loss_fn
        self.data_fn = data_fn
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.app = ClientApp(mods=list(mods))
        self.app.train()(self.handle)

    # --- Flower entry point ------------------------------------------------------------------
    def handle(self, msg: Message, context: Context) -> Message:
        """Answer one train Message (raises ``ValueError`` for an unknown op or a malformed
        message; Flower returns it to the server as an error reply)."""
        record = msg.content.config_records.get("config")
        config: dict[str, Any] = dict(record) if record is not None else {}
        op = config.get("op")
        if op not in OPS:
            raise ValueError(f"GradientClient: unknown op {op!r}; it answers {OPS}")
        x, y = self.data_fn(context, config)
        if label_flip_requested(msg, context):
            y = self._flip(y, x, config)
        arrays = msg.content.array_records
        batch = _batch(len(y), int(config.get("batch-size", 0)), int(config.get("batch-seed", 0)))
        xb, yb = x[batch].to(self.device), y[batch].to(self.device)
        out: dict[str, Any] = {}
        if op == "byzsgd":
            out["grad"], loss, counts = worker_step(self, context, config, msg.content, xb, yb)
            out["metrics"] = MetricRecord({"train-loss": loss, "num-examples": len(y), **counts})
            return Message(content=RecordDict(out), reply_to=msg)
        if "arrays" not in arrays:
            raise ValueError("GradientClient: the message has no 'arrays' record (the model)")
        layout = layout_of(arrays["arrays"]).floating()
        grad, loss = self.gradient(arrays["arrays"], layout, xb, yb, config)
        if op == "grad":
            if "compressor" in config:
                compressor = get_compressor(str(config["compressor"]))
                seed = int(config.get("compressor-seed", 0))
                out["payload"] = payload_record(compressor.compress(grad, seed))
            else:
                out["grad"] = unflatten(grad, layout)
        elif op == "momentum":
            m = momentum_update(
                load_vector(context, config, "momentum"), grad, float(config["beta"])
            )
            store_vector(context, config, "momentum", m)
            if "ef21-version" in config:
                out.update(self.error_feedback(context, config, m, layout))
            else:
                out["grad"] = unflatten(m, layout)
        elif op == "double":
            d = self.double_momentum(context, config, arrays["arrays"], layout, grad, xb, yb)
            out["grad"] = unflatten(d, layout)
        else:  # grad_diff
            if "prev" not in arrays:
                raise ValueError("GradientClient: grad_diff needs the 'prev' record (x^k)")
            prev, _ = self.gradient(arrays["prev"], layout, xb, yb, config)
            compressor = get_compressor(str(config.get("compressor", "none")))
            payload = compressor.compress(grad - prev, int(config.get("compressor-seed", 0)))
            out["payload"] = payload_record(payload)
        out["metrics"] = MetricRecord({"train-loss": loss, "num-examples": len(y)})
        return Message(content=RecordDict(out), reply_to=msg)

    # --- the numeric step ----------------------------------------------------------------------
    def gradient(
        self,
        point: ArrayRecord,
        layout: Layout,
        x: torch.Tensor,
        y: torch.Tensor,
        config: dict[str, Any],
    ) -> tuple[torch.Tensor, float]:
        """(gradient of ``loss_fn`` at ``point`` on the batch as a flat vector, the loss)."""
        model = self.model_fn(config).to(self.device)
        model.load_state_dict(point.to_torch_state_dict())
        model.train()
        model.zero_grad(set_to_none=True)
        loss = self.loss_fn(model, x, y)
        loss.backward()
        params = dict(model.named_parameters(remove_duplicate=False))  # tied weights too
        parts = []
        for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
            p = params.get(key)
            g = p.grad if p is not None else None
            if g is None:
                g = torch.zeros(shape, dtype=getattr(torch, dtype))
            parts.append(g.detach().reshape(-1).to("cpu", layout.vector_dtype))
        return torch.cat(parts), float(loss.detach())

    def error_feedback(
        self, context: Context, config: dict[str, Any], v: torch.Tensor, layout: Layout
    ) -> dict[str, ArrayRecord]:
        """EF21 error feedback of the momentum ``v`` (Byz-EF21-SGDM, Liu et al. 2024, Alg. 1):
        ``c = C(v - g)``, ``g += c``, reply ``{"payload": c}``.

        The client keeps ``g``, the ``g`` before the last step and a version t (the number of
        its replies the server has applied, minus one: the dense reset is version 0). The
        server sends its own version as ``ef21-version`` (-1: it has no copy of this g):

        - equal counts: the normal step above;
        - the client is one ahead (its last reply was lost or rejected): it restores the
          previous g first, then steps, so both sides apply the same c;
        - anything else (first contact, lost client state): a reset, ``g = v`` sent dense
          as ``{"grad": v}`` (the paper's initialisation ``g_i^0 = v_i^0``).
        """
        server = int(config["ef21-version"])
        g = load_vector(context, config, "ef21-g")
        prev = load_vector(context, config, "ef21-g-prev")
        mine = load_count(context, config, "ef21-count")
        if mine is not None and mine == server + 1:  # our last reply never reached the server
            g, mine = prev, server
        if server >= 0 and g is not None and mine == server and g.shape == v.shape:
            compressor = get_compressor(str(config.get("compressor", "none")))
            payload = compressor.compress(v - g, int(config.get("compressor-seed", 0)))
            c = compressor.decompress(payload, v.numel()).to(g.dtype)
            store_vector(context, config, "ef21-g-prev", g)
            store_vector(context, config, "ef21-g", g + c)
            store_count(context, config, "ef21-count", server + 1)
            return {"payload": payload_record(payload)}
        drop(context, config, "ef21-g-prev")  # a lost reset is followed by another reset
        store_vector(context, config, "ef21-g", v)
        store_count(context, config, "ef21-count", server + 1)
        return {"grad": unflatten(v, layout)}

    def double_momentum(
        self,
        context: Context,
        config: dict[str, Any],
        point: ArrayRecord,
        layout: Layout,
        grad: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """mu2-SGD's corrected momentum (Dahan & Levy 2024; STORM, Cutkosky & Orabona 2019):
        ``d = grad f(x_t; z) + (1 - beta) (d_prev - grad f(x_prev; z))`` with the SAME minibatch
        z at both points, where x_prev and d_prev are this client's previous point and estimate
        (kept in ``context.state``); the first call returns ``grad f(x_t; z)``."""
        d_prev = load_vector(context, config, "double-d")
        x_prev = load_vector(context, config, "double-x")
        here = flatten(point, layout)
        d = grad
        if d_prev is not None and x_prev is not None and x_prev.shape == here.shape:
            prev_point = ArrayRecord(dict(point.items()) | dict(unflatten(x_prev, layout).items()))
            g_prev, _ = self.gradient(prev_point, layout, x, y, config)
            d = grad + (1.0 - float(config["beta"])) * (d_prev - g_prev)
        store_vector(context, config, "double-d", d)
        store_vector(context, config, "double-x", here)
        return d

    # --- helpers ---------------------------------------------------------------------------------
    def _flip(self, y: torch.Tensor, x: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
        classes = self.num_classes
        if classes is None:
            model = self.model_fn(config).eval()  # eval: BatchNorm accepts one sample
            with torch.no_grad():
                classes = int(model(x[:1].to(self.device)).shape[-1])
        return LabelFlip(num_classes=classes)(y)


def _batch(n: int, size: int, seed: int) -> torch.Tensor:
    """Indices of a minibatch of ``size`` of ``n`` samples, without replacement, from ``seed``
    (``size`` 0 or >= n: all samples, in order)."""
    if n == 0:
        raise ValueError("GradientClient: the node has no local data")
    if size <= 0 or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]

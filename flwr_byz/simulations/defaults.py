"""Every method's run defaults by name, collected from the method modules' ``DEFAULTS``.

``ExperimentConfig.resolved()`` fills the method-dependent options left unset (None) from
here; ``flwr_byz.simulations.methods`` checks that every method it builds has an entry.
"""

from __future__ import annotations

from ..methods import byzsgd, ef21, fedavg, marina, momentum, mu2sgd
from ..methods.defaults import RunDefaults
from ..specs import unknown

__all__ = ["METHOD_DEFAULTS", "RunDefaults", "method_defaults"]

#: method name -> its run defaults (the keys of ``flwr_byz.simulations.methods.METHODS``).
METHOD_DEFAULTS: dict[str, RunDefaults] = {
    **fedavg.DEFAULTS,
    **momentum.DEFAULTS,
    **marina.DEFAULTS,
    **ef21.DEFAULTS,
    **mu2sgd.DEFAULTS,
    **byzsgd.DEFAULTS,
}


def method_defaults(method: str) -> RunDefaults:
    """The run defaults of ``method``; ``ValueError`` naming the methods for an unknown one."""
    if method not in METHOD_DEFAULTS:
        raise unknown("method", method, list(METHOD_DEFAULTS))
    return METHOD_DEFAULTS[method]

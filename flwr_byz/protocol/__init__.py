"""The wire contract between the strategies (server) and the clients: record/config/metric
keys, op names (``keys``), the ArrayRecord <-> vector bridge (``records``) and compressed
payload records (``payload``). Every name of ``keys`` is importable from here."""

from . import keys
from .keys import *  # noqa: F403 (the whole contract; its names are listed in keys.__all__)
from .metrics import count_byzantine, sum_byzantine_replies
from .payload import PayloadCodec
from .records import (
    Layout,
    OversizeError,
    array_view,
    check_array,
    flatten,
    layout_of,
    payload_record,
    record_payload,
    to_state_dict,
    unflatten,
)

__all__ = [
    *keys.__all__,
    "Layout",
    "OversizeError",
    "PayloadCodec",
    "array_view",
    "check_array",
    "count_byzantine",
    "flatten",
    "layout_of",
    "payload_record",
    "record_payload",
    "sum_byzantine_replies",
    "to_state_dict",
    "unflatten",
]

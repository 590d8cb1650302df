"""``flwr_byz.statetree``: capture an object's state as tensors and JSON values, restore it
into a fresh object in place.

Every supported value type survives ``torch.save`` / ``torch.load(weights_only=True)`` and comes
back equal (RNG states continue the same sequence); shared objects stay shared; nested objects
are restored in place and callables kept as the fresh object has them; a dataclass of
``flwr_byz`` is built where the fresh object has None, and nothing else is ever imported or
built; an unknown value type raises on capture, naming the attribute.
"""

from __future__ import annotations

import dataclasses
import io
import random
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from flwr_byz import statetree
from flwr_byz.aggregators import get_aggregator
from flwr_byz.attacks import get_attack
from flwr_byz.methods.byzsgd import WorkerState
from flwr_byz.protocol.records import Layout, layout_of


def _through_file(tree: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(tree, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class Holder:
    """A plain object (not a dataclass): only restored in place, never built."""

    __module__ = "flwr_byz.tests_holder"  # walked like an object of the package

    def __init__(self) -> None:
        self.value: Any = None


def _holder(**fields: Any) -> Holder:
    obj = Holder()
    obj.__dict__.update(fields)
    return obj


def test_every_supported_value_round_trips() -> None:
    rng = random.Random(3)
    rng.random()
    gen = torch.Generator().manual_seed(5)
    torch.rand(3, generator=gen)
    npgen = np.random.default_rng(7)
    npgen.random()
    values = {
        "none": None, "bool": True, "int": -3, "float": float("nan"), "inf": float("inf"),
        "str": "x", "tensor": torch.arange(6.0).reshape(2, 3), "list": [1, [2, (3, 4)]],
        "tuple": (1, "a"), "dict": {1: "a", (2, 3): [4], "k": {"n": 1}},
        "set": {3, 1, 2}, "frozenset": frozenset({"a", "b"}), "size": torch.Size([2, 3]),
        "dtype": torch.float64, "device": torch.device("cpu"),
        "ndarray": np.arange(4, dtype=np.int16), "npscalar": np.float32(1.5),
        "random": rng, "generator": gen, "npgen": npgen,
        "record": ArrayRecord({"w": torch.ones(2, 2), "n": torch.tensor(3)}),
    }  # fmt: skip
    tree = _through_file(statetree.capture(_holder(**values)))
    fresh = Holder()
    statetree.restore(fresh, tree)
    out = vars(fresh)
    assert set(out) == set(values) | {"value"}
    for key in ("none", "bool", "int", "inf", "str", "list", "tuple", "dict", "set",
                "frozenset", "size", "dtype", "device"):  # fmt: skip
        assert out[key] == values[key] and type(out[key]) is type(values[key]), key
    assert out["float"] != out["float"]  # NaN
    assert torch.equal(out["tensor"], values["tensor"])
    assert out["ndarray"].dtype == np.int16 and np.array_equal(out["ndarray"], values["ndarray"])
    assert type(out["npscalar"]) is np.float32 and out["npscalar"] == 1.5
    assert out["random"].random() == rng.random()
    assert torch.equal(torch.rand(4, generator=out["generator"]), torch.rand(4, generator=gen))
    assert out["npgen"].random() == npgen.random()
    state = out["record"].to_torch_state_dict()
    assert list(state) == ["w", "n"] and torch.equal(state["n"], torch.tensor(3))


def test_objects_are_restored_in_place_and_callables_kept() -> None:
    aggregator = get_aggregator("cc", f=1)
    aggregator(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))  # keeps _v
    saved = _holder(aggregator=aggregator, fn=len, method=aggregator.__call__)
    tree = _through_file(statetree.capture(saved))
    assert tree["fields"]["fn"] == {statetree.TYPE: "callable", "name": "len"}
    fresh_aggregator = get_aggregator("cc", f=1)
    fresh = _holder(aggregator=fresh_aggregator, fn=len, method=print)
    statetree.restore(fresh, tree)
    assert fresh.aggregator is fresh_aggregator  # in place
    assert torch.equal(fresh_aggregator._v, aggregator._v)
    assert fresh.fn is len and fresh.method is print  # configuration: the fresh one's


def test_a_dataclass_is_built_where_the_fresh_object_has_none() -> None:
    state = WorkerState(x=torch.ones(3), g=None, step=4, history=torch.zeros(2))
    layout = layout_of(ArrayRecord({"w": torch.ones(2, 2)}))
    tree = _through_file(statetree.capture(_holder(value=state, layout=layout)))
    fresh = Holder()
    statetree.restore(fresh, tree)
    assert isinstance(fresh.value, WorkerState) and fresh.value.step == 4
    assert torch.equal(fresh.value.x, torch.ones(3)) and fresh.value.g is None
    assert isinstance(fresh.layout, Layout) and fresh.layout == layout
    with pytest.raises(dataclasses.FrozenInstanceError):
        fresh.value.step = 5  # type: ignore[misc]  # still a frozen dataclass


def test_shared_objects_stay_shared() -> None:
    shared = [1, 2]
    attack = get_attack("gaussian", seed=1)
    tree = _through_file(statetree.capture(_holder(a=shared, b=shared, x=attack, y=attack)))
    fresh = _holder(x=get_attack("gaussian", seed=1), y=None)
    statetree.restore(fresh, tree)
    assert fresh.a == [1, 2] and fresh.a is fresh.b
    assert fresh.x is fresh.y


def test_a_stateful_attack_continues_its_sequence() -> None:
    attack = get_attack("gaussian", seed=2)
    own = torch.zeros(1, 4)
    attack(own[:0], own)
    tree = _through_file(statetree.capture(attack))
    fresh = get_attack("gaussian", seed=2)
    statetree.restore(fresh, tree)
    assert torch.equal(fresh(own[:0], own), attack(own[:0], own))


class Opaque:
    """A type statetree does not know."""


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (Opaque(), "Holder.value: a value of type tests.test_statetree:Opaque"),
        ({"k": [Opaque()]}, r"Holder.value\['k'\]\[0\]: a value of type"),
        (np.array(["a"], dtype=object), "Holder.value: a NumPy array of dtype object"),
        (Holder, "Holder.value: a value of type builtins:type"),
        (torch.nn.Linear(2, 2), "Holder.value: a value of type torch.nn.modules.linear:Linear"),
    ],
)
def test_capture_refuses_an_unknown_type(value: Any, named: str) -> None:
    with pytest.raises(TypeError, match=f"cannot save {named}"):
        statetree.capture(_holder(value=value))


def _object_node(cls: str, **fields: Any) -> dict[str, Any]:
    return {statetree.TYPE: "object", "id": 1, "class": cls, "fields": fields}


@pytest.mark.parametrize(
    ("node", "named"),
    [
        (_object_node("os:system"), "'os:system' is not a flwr_byz class"),
        (_object_node("builtins:object"), "is not a flwr_byz class"),
        (_object_node("flwr_byz.files:Path"), "is not a flwr_byz dataclass"),
        (_object_node("flwr_byz.statetree:_Restore"), "is not a flwr_byz dataclass"),
        (_object_node("flwr_byz.nothing:X"), "no class"),
        ({statetree.TYPE: "eval", "code": "1"}, "an unknown node type 'eval'"),
        ({statetree.TYPE: "callable", "name": "print"}, "the callable 'print' is configuration"),
        ({statetree.TYPE: "ref", "id": 9}, "a reference to nothing restored"),
        ({statetree.TYPE: "torch.dtype", "name": "load"}, "no torch dtype 'load'"),
    ],
)
def test_restore_builds_nothing_else(node: dict[str, Any], named: str) -> None:
    tree = _object_node(f"{Holder.__module__}:Holder", value=node)
    with pytest.raises(ValueError, match=named):
        statetree.restore(Holder(), tree)


def test_restore_refuses_another_class() -> None:
    tree = statetree.capture(get_aggregator("cc", f=1))
    with pytest.raises(ValueError, match=r"the saved state is of .*CenteredClipping.*Holder"):
        statetree.restore(Holder(), tree)
    fresh = _holder(value=get_aggregator("median"))
    tree = statetree.capture(_holder(value=get_aggregator("cc", f=1)))
    with pytest.raises(ValueError, match=r"Holder.value: the checkpoint has a .*CenteredClipping"):
        statetree.restore(fresh, tree)

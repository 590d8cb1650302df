"""State trees: the state of an object as tensors and JSON-able values, and back, in place.

``capture(obj)`` walks ``vars(obj)`` (a strategy, an aggregator, an attack, ...) and returns a
tree that ``torch.save`` writes and ``torch.load(..., weights_only=True)`` reads back without
unpickling any object: every node is ``None``, a ``bool``/``int``/``float``/``str``, a tensor,
or a dict whose ``"$type"`` says what it stands for (a list, a tuple, a dict with any keys, a
set, a NumPy array or scalar, a ``random.Random``/``torch.Generator``/NumPy ``Generator`` state,
a torch dtype or device, a Flower ``ArrayRecord``, an object with its fields, or a reference to
an object met before: shared objects stay shared), with its items in plain lists. Objects of
``flwr_byz`` classes are walked field by field; a function, a bound method or a lambda is
configuration, saved by name only. Any other value raises ``TypeError`` naming it, so that no
state is silently dropped.

``restore(obj, tree)`` puts the state back into a *fresh* object of the same class (built from
the same configuration): nested objects are restored in place, callables are kept as the fresh
object has them, and where the fresh object has ``None`` (state created during a run) an object
is built again, only for a dataclass of a ``flwr_byz`` module (``object.__new__`` and its
fields; no other code runs). A tree that does not match the object raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import importlib
import random
import types
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = ["TYPE", "capture", "restore"]

#: The key of a dict node that says what the node stands for.
TYPE = "$type"

_PACKAGE = "flwr_byz"
_MISSING: Any = object()
_PLAIN = (bool, int, float, str)
_CALLABLES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _ours(cls: type) -> bool:
    return cls.__module__ == _PACKAGE or cls.__module__.startswith(_PACKAGE + ".")


# --- capture ---------------------------------------------------------------------------------


def capture(obj: object) -> dict[str, Any]:
    """The state of ``obj`` (any class: e.g. Flower's FedAvg) as a tree (module doc);
    ``TypeError`` for a value of a type it cannot save."""
    return _Capture().object(obj, type(obj).__name__)


class _Capture:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}  # id() of every object/container walked -> its number
        self.alive: list[object] = []  # keeps them alive, so that no id() is reused

    def shared(self, value: object) -> tuple[int, dict[str, Any] | None]:
        """(the number of ``value``, a reference node when it was walked before)."""
        number = self.ids.get(id(value))
        if number is not None:
            return number, {TYPE: "ref", "id": number}
        number = self.ids[id(value)] = len(self.ids)
        self.alive.append(value)
        return number, None

    def object(self, obj: object, path: str) -> dict[str, Any]:
        number, ref = self.shared(obj)
        if ref is not None:
            return ref
        try:
            fields = vars(obj)
        except TypeError:
            raise TypeError(
                f"cannot save {path}: a {_class_name(type(obj))} has no fields"
            ) from None
        return {
            TYPE: "object",
            "id": number,
            "class": _class_name(type(obj)),
            "fields": {name: self.value(v, f"{path}.{name}") for name, v in fields.items()},
        }

    def value(self, value: Any, path: str) -> Any:
        kind = type(value)
        if value is None or kind in _PLAIN:
            return value
        if kind is torch.Tensor:
            return value.detach()
        if kind in (list, dict, set) or _is_array_record(value):
            number, ref = self.shared(value)
            if ref is not None:
                return ref
            if kind is dict:
                pairs = [
                    [self.value(k, f"{path}<key>"), self.value(v, f"{path}[{k!r}]")]
                    for k, v in value.items()
                ]
                return {TYPE: "dict", "id": number, "items": pairs}
            if kind is list or kind is set:
                return {TYPE: kind.__name__, "id": number, "items": self.items(value, path)}
            pairs = [[k, t.detach()] for k, t in value.to_torch_state_dict().items()]
            return {TYPE: "ArrayRecord", "id": number, "arrays": pairs}
        if kind in (tuple, frozenset):
            return {TYPE: kind.__name__, "items": self.items(value, path)}
        if kind is torch.Size:
            return {TYPE: "torch.Size", "items": [int(v) for v in value]}
        if kind is random.Random:
            return {TYPE: "random.Random", "state": self.value(value.getstate(), path)}
        if kind is torch.Generator:
            return {
                TYPE: "torch.Generator",
                "device": str(value.device),
                "state": value.get_state(),
            }
        if kind is np.random.Generator:
            bits = value.bit_generator
            return {
                TYPE: "numpy.Generator",
                "bit_generator": type(bits).__name__,
                "state": self.value(bits.state, path),
            }
        if kind is np.ndarray:
            return {TYPE: "numpy.ndarray", "value": _numpy_tensor(value, path)}
        if isinstance(value, np.generic):
            return {TYPE: "numpy.scalar", "dtype": value.dtype.str, "value": value.item()}
        if kind is torch.dtype:
            return {TYPE: "torch.dtype", "name": str(value).removeprefix("torch.")}
        if kind is torch.device:
            return {TYPE: "torch.device", "name": str(value)}
        if isinstance(value, _CALLABLES):
            return {TYPE: "callable", "name": str(getattr(value, "__qualname__", kind.__name__))}
        if _ours(kind) and not isinstance(value, type):
            return self.object(value, path)
        raise TypeError(
            f"cannot save {path}: a value of type {_class_name(kind)} "
            "(statetree saves tensors, JSON values, RNG states and flwr_byz objects)"
        )

    def items(self, values: Any, path: str) -> list[Any]:
        return [self.value(v, f"{path}[{i}]") for i, v in enumerate(values)]


def _numpy_tensor(array: np.ndarray, path: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.array(array, copy=True))
    except TypeError:
        raise TypeError(f"cannot save {path}: a NumPy array of dtype {array.dtype}") from None


def _is_array_record(value: object) -> bool:
    kind = type(value)
    return kind.__name__ == "ArrayRecord" and kind.__module__.startswith("flwr.")


# --- restore ---------------------------------------------------------------------------------


def restore(obj: object, tree: Any) -> None:
    """Put the state ``tree`` (from :func:`capture`) back into ``obj``, a fresh object of the
    same class, in place; ``ValueError`` when the tree does not fit it."""
    path = type(obj).__name__
    if not isinstance(tree, dict) or tree.get(TYPE) != "object":
        raise ValueError(f"cannot restore {path}: the saved state is not an object")
    if tree.get("class") != _class_name(type(obj)):
        raise ValueError(
            f"cannot restore {path}: the saved state is of {tree.get('class')!r}, "
            f"the object a {_class_name(type(obj))}"
        )
    _Restore().value(obj, tree, path)


class _Restore:
    def __init__(self) -> None:
        self.memo: dict[int, Any] = {}  # number -> the restored object/container

    def value(self, fresh: Any, node: Any, path: str) -> Any:
        """The restored value of ``node``, reusing ``fresh`` (the fresh object's value, or
        ``_MISSING``) where it is an object or container to restore in place."""
        if node is None or type(node) in _PLAIN or isinstance(node, torch.Tensor):
            return node
        if not isinstance(node, dict) or not isinstance(node.get(TYPE), str):
            raise ValueError(f"cannot restore {path}: an unknown node {type(node).__name__}")
        kind = node[TYPE]
        if kind == "ref":
            if node.get("id") not in self.memo:
                raise ValueError(f"cannot restore {path}: a reference to nothing restored")
            return self.memo[node["id"]]
        method = self.KINDS.get(kind)
        if method is None:
            raise ValueError(f"cannot restore {path}: an unknown node type {kind!r}")
        return method(self, fresh, node, path)

    def remember(self, node: dict[str, Any], value: Any, path: str) -> None:
        number = node.get("id")
        if type(number) is not int or number in self.memo:
            raise ValueError(f"cannot restore {path}: a bad or repeated id {number!r}")
        self.memo[number] = value

    def items(self, fresh: Any, node: dict[str, Any], path: str) -> list[Any]:
        items = node.get("items")
        if not isinstance(items, list):
            raise ValueError(f"cannot restore {path}: no items")
        olds = list(fresh) if type(fresh) in (list, tuple) and len(fresh) == len(items) else None
        return [
            self.value(olds[i] if olds else _MISSING, v, f"{path}[{i}]")
            for i, v in enumerate(items)
        ]

    def list_(self, fresh: Any, node: dict[str, Any], path: str) -> list[Any]:
        out: list[Any] = []
        self.remember(node, out, path)
        out.extend(self.items(fresh, node, path))
        return out

    def set_(self, fresh: Any, node: dict[str, Any], path: str) -> set[Any]:
        out: set[Any] = set()
        self.remember(node, out, path)
        out.update(self.items(_MISSING, node, path))
        return out

    def dict_(self, fresh: Any, node: dict[str, Any], path: str) -> dict[Any, Any]:
        items = node.get("items")
        if not isinstance(items, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in items
        ):
            raise ValueError(f"cannot restore {path}: no key-value pairs")
        out: dict[Any, Any] = {}
        self.remember(node, out, path)
        olds = fresh if type(fresh) is dict else {}
        for k, v in items:
            key = self.value(_MISSING, k, f"{path}<key>")
            try:
                old = olds.get(key, _MISSING)
            except TypeError:
                raise ValueError(f"cannot restore {path}: an unhashable key {key!r}") from None
            out[key] = self.value(old, v, f"{path}[{key!r}]")
        return out

    def object_(self, fresh: Any, node: dict[str, Any], path: str) -> Any:
        name = node.get("class")
        if not isinstance(name, str):
            raise ValueError(f"cannot restore {path}: an object without a class")
        if fresh is not _MISSING and fresh is not None:
            if _class_name(type(fresh)) != name:
                raise ValueError(
                    f"cannot restore {path}: the checkpoint has a {name}, the fresh run a "
                    f"{_class_name(type(fresh))}"
                )
            obj = fresh
        else:
            cls = _dataclass(name, path)
            obj = object.__new__(cls)  # no __init__: the fields come next
        self.remember(node, obj, path)
        fields = node.get("fields")
        if not isinstance(fields, dict):
            raise ValueError(f"cannot restore {path}: no fields")
        current = vars(obj)
        for field, saved in fields.items():
            if not isinstance(field, str):
                raise ValueError(f"cannot restore {path}: a field name {field!r}")
            old = current.get(field, _MISSING)
            value = self.value(old, saved, f"{path}.{field}")
            if value is not old:
                object.__setattr__(obj, field, value)  # frozen dataclasses too
        return obj

    def callable_(self, fresh: Any, node: dict[str, Any], path: str) -> Any:
        if fresh is _MISSING or not callable(fresh):
            raise ValueError(
                f"cannot restore {path}: the callable {node.get('name')!r} is configuration "
                "that the fresh object must have"
            )
        return fresh

    def random_(self, fresh: Any, node: dict[str, Any], path: str) -> random.Random:
        state = self.value(_MISSING, node.get("state"), path)
        rng = random.Random()
        try:
            rng.setstate(state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot restore {path}: a bad random.Random state ({exc})") from None
        return rng

    def numpy_generator(self, fresh: Any, node: dict[str, Any], path: str) -> Any:
        name = node.get("bit_generator")
        if name not in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
            raise ValueError(f"cannot restore {path}: an unknown bit generator {name!r}")
        bits = getattr(np.random, str(name))()
        try:
            bits.state = self.value(_MISSING, node.get("state"), path)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot restore {path}: a bad {name} state ({exc})") from None
        return np.random.Generator(bits)

    def array_record(self, fresh: Any, node: dict[str, Any], path: str) -> Any:
        from flwr.app import ArrayRecord  # the only Flower type a tree holds

        arrays = node.get("arrays")
        if not isinstance(arrays, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[1], torch.Tensor) for p in arrays
        ):
            raise ValueError(f"cannot restore {path}: an ArrayRecord without its arrays")
        record = ArrayRecord({str(k): t for k, t in arrays})
        self.remember(node, record, path)
        return record

    KINDS: ClassVar[dict[str, Callable[[_Restore, Any, dict[str, Any], str], Any]]] = {
        "list": list_,
        "tuple": lambda self, fresh, node, path: tuple(self.items(fresh, node, path)),
        "torch.Size": lambda self, fresh, node, path: torch.Size(self.items(_MISSING, node, path)),
        "dict": dict_,
        "set": set_,
        "frozenset": lambda self, fresh, node, path: frozenset(self.items(_MISSING, node, path)),
        "object": object_,
        "callable": callable_,
        "random.Random": random_,
        "torch.Generator": lambda self, fresh, node, path: _torch_generator(node, path),
        "numpy.Generator": numpy_generator,
        "numpy.ndarray": lambda self, fresh, node, path: _numpy_array(node, path),
        "numpy.scalar": lambda self, fresh, node, path: _numpy_scalar(node, path),
        "torch.dtype": lambda self, fresh, node, path: _torch_dtype(node, path),
        "torch.device": lambda self, fresh, node, path: _torch_device(node, path),
        "ArrayRecord": array_record,
    }


def _dataclass(name: str, path: str) -> type[Any]:
    """The ``flwr_byz`` dataclass ``"module:qualname"`` (only ``flwr_byz`` modules are
    imported)."""
    module, _, qualname = name.partition(":")
    if not (module == _PACKAGE or module.startswith(_PACKAGE + ".")) or not qualname:
        raise ValueError(f"cannot restore {path}: {name!r} is not a flwr_byz class")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        raise ValueError(f"cannot restore {path}: no class {name!r}") from None
    if not (isinstance(found, type) and dataclasses.is_dataclass(found) and _ours(found)):
        raise ValueError(f"cannot restore {path}: {name!r} is not a flwr_byz dataclass")
    return found


def _torch_generator(node: dict[str, Any], path: str) -> torch.Generator:
    state = node.get("state")
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"cannot restore {path}: a torch.Generator without its state")
    try:
        gen = torch.Generator(device=str(node.get("device", "cpu")))
        gen.set_state(state)
    except RuntimeError as exc:
        raise ValueError(f"cannot restore {path}: a bad torch.Generator state ({exc})") from None
    return gen


def _numpy_array(node: dict[str, Any], path: str) -> np.ndarray:
    value = node.get("value")
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"cannot restore {path}: a NumPy array without data")
    return value.numpy().copy()


def _numpy_scalar(node: dict[str, Any], path: str) -> Any:
    try:
        return np.dtype(str(node.get("dtype"))).type(node.get("value"))
    except TypeError:
        raise ValueError(f"cannot restore {path}: a NumPy scalar {node!r}") from None


def _torch_dtype(node: dict[str, Any], path: str) -> torch.dtype:
    dtype = getattr(torch, str(node.get("name")), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"cannot restore {path}: no torch dtype {node.get('name')!r}")
    return dtype


def _torch_device(node: dict[str, Any], path: str) -> torch.device:
    try:
        return torch.device(str(node.get("name")))
    except RuntimeError:
        raise ValueError(f"cannot restore {path}: no torch device {node.get('name')!r}") from None

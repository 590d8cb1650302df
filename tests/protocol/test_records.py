"""records: ArrayRecord <-> flat vector (Layout, layout_of, flatten, unflatten)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from flwr_byz.protocol.records import Layout, flatten, layout_of, unflatten


def _record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _raw(header_dtype: str, shape: tuple[int, ...], data: np.ndarray) -> Array:
    """An Array whose header says ``header_dtype``/``shape`` but whose bytes hold ``data``."""
    buf = io.BytesIO()
    np.save(buf, data, allow_pickle=False)
    return Array(dtype=header_dtype, shape=shape, stype="numpy.ndarray", data=buf.getvalue())


def _mixed() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return _record(
        w=rng.normal(size=(3, 4)).astype(np.float32),
        b=rng.normal(size=4).astype(np.float32),
        empty=np.zeros((0, 3), dtype=np.float32),
    )


def test_layout_reads_headers() -> None:
    layout = layout_of(_mixed())
    assert layout.keys == ("w", "b", "empty")
    assert layout.shapes == ((3, 4), (4,), (0, 3))
    assert layout.dtypes == ("float32",) * 3
    assert layout.sizes == (12, 4, 0)
    assert layout.numel == 16
    assert layout.vector_dtype == torch.float32
    assert layout.spec() == {
        "w": ((3, 4), "float32"),
        "b": ((4,), "float32"),
        "empty": ((0, 3), "float32"),
    }
    scalar = layout_of(_record(s=np.array(2.5, dtype=np.float32)))
    assert scalar.shapes == ((),) and scalar.sizes == (1,)


def test_float32_round_trip_is_exact() -> None:
    record = _mixed()
    vec = flatten(record)
    assert vec.dtype == torch.float32 and vec.shape == (16,)
    expected = np.concatenate([record[k].numpy().ravel() for k in record])
    assert np.array_equal(vec.numpy(), expected)
    back = unflatten(vec, layout_of(record))
    assert list(back.keys()) == list(record.keys())
    for key in record:
        got, want = back[key].numpy(), record[key].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


def test_float64_promotes_the_vector_and_each_array_keeps_its_dtype() -> None:
    record = _record(
        a=np.array([1.0, 1.0 + 2.0**-40], dtype=np.float64),  # not representable in float32
        b=np.array([0.1, 0.2], dtype=np.float32),
        h=np.array([0.5, -2.0], dtype=np.float16),
    )
    layout = layout_of(record)
    assert layout.vector_dtype == torch.float64
    vec = flatten(record)
    assert vec.dtype == torch.float64
    assert vec[1].item() == 1.0 + 2.0**-40  # the float64 value survives the concatenation
    back = unflatten(vec, layout)
    for key in record:
        assert back[key].numpy().dtype == record[key].numpy().dtype
        assert np.array_equal(back[key].numpy(), record[key].numpy())


def test_integer_arrays_are_rounded_back() -> None:
    record = _record(
        w=np.array([1.0, 2.0], dtype=np.float32),
        count=np.array([7], dtype=np.int64),
        small=np.array([[1, 2], [3, 4]], dtype=np.int32),
    )
    layout = layout_of(record)
    vec = flatten(record)
    assert vec.tolist() == [1.0, 2.0, 7.0, 1.0, 2.0, 3.0, 4.0]
    moved = vec + torch.tensor([0.5, 0.5, 0.6, 0.4, -0.4, 1.7, -1.6])
    back = unflatten(moved, layout)
    assert back["count"].numpy().dtype == np.int64
    assert back["count"].numpy().tolist() == [8]  # 7.6 rounds to 8, not truncated to 7
    assert back["small"].numpy().dtype == np.int32
    assert back["small"].numpy().tolist() == [[1, 2], [5, 2]]  # 1.6 -> 2, 2.4 -> 2
    assert back["w"].numpy().tolist() == [1.5, 2.5]


def test_flatten_follows_the_layout_key_order() -> None:
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([3.0], dtype=np.float32)
    layout = layout_of(_record(a=a, b=b))
    reordered = _record(b=b, a=a)
    assert flatten(reordered).tolist() == [3.0, 1.0, 2.0]  # its own order
    assert flatten(reordered, layout).tolist() == [1.0, 2.0, 3.0]  # the layout's order
    back = unflatten(flatten(reordered, layout), layout)
    assert list(back.keys()) == ["a", "b"]


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_zero_dim_arrays_keep_their_shape(dtype: type) -> None:
    record = _record(w=np.array([1.0, 2.0], dtype=np.float32), s=np.array(3, dtype=dtype))
    layout = layout_of(record)
    back = unflatten(flatten(record), layout)
    assert back["s"].shape == ()
    assert back["s"].numpy().shape == ()
    assert layout_of(back) == layout


@pytest.mark.parametrize("length", [15, 17])
def test_unflatten_rejects_a_wrong_length(length: int) -> None:
    layout = layout_of(_mixed())
    with pytest.raises(ValueError, match="16"):
        unflatten(torch.zeros(length), layout)


def test_unflatten_rejects_a_matrix() -> None:
    layout = layout_of(_mixed())
    with pytest.raises(ValueError):
        unflatten(torch.zeros(1, 16), layout)


def test_flatten_rejects_a_record_shorter_than_the_layout() -> None:
    layout = Layout(keys=("w",), shapes=((5,),), dtypes=("float32",))
    with pytest.raises(ValueError, match="'w'"):
        flatten(_record(w=np.zeros(4, dtype=np.float32)), layout)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(
            Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b"not npy"),
            id="garbage-bytes",
        ),
        pytest.param(_raw("float32", (3,), np.zeros(2, np.float32)), id="too-few-values"),
        pytest.param(_raw("float32", (3,), np.zeros(4, np.float32)), id="too-many-values"),
        pytest.param(
            Array(dtype="float32", shape=(3,), stype="torch.Tensor", data=b"\x00" * 12),
            id="unknown-stype",
        ),
        pytest.param(
            Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b""), id="no-bytes"
        ),
        pytest.param(_raw("float32", (3,), np.array(["a", "b", "c"])), id="string-data"),
    ],
)
def test_malformed_array_bytes_raise_value_error(array: Array) -> None:
    record = ArrayRecord({"w": array})
    with pytest.raises(ValueError, match="'w'"):
        flatten(record)

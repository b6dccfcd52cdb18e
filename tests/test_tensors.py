"""The tensor contract: the dtype table, tensor specs, batch merge/split and BYTES tensors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nbserve._proto import model_config_pb2
from nbserve.errors import ConfigError, InvalidInput
from nbserve.tensors import (
    DTYPES,
    TensorSpec,
    array_library,
    as_bytes_array,
    config_dtype,
    deserialize_bytes,
    from_dlpack,
    merge,
    numpy_dtype,
    serialize_bytes,
    shape_matches,
    split,
    to_numpy,
    torch_dtype,
    triton_dtype,
)

mc = model_config_pb2()

# Every Triton type with its NumPy spelling (None: NumPy has none) and torch attribute.
TABLE = {
    "BOOL": ("bool", "bool"),
    "UINT8": ("uint8", "uint8"),
    "UINT16": ("uint16", "uint16"),
    "UINT32": ("uint32", "uint32"),
    "UINT64": ("uint64", "uint64"),
    "INT8": ("int8", "int8"),
    "INT16": ("int16", "int16"),
    "INT32": ("int32", "int32"),
    "INT64": ("int64", "int64"),
    "FP16": ("float16", "float16"),
    "FP32": ("float32", "float32"),
    "FP64": ("float64", "float64"),
    "BF16": (None, "bfloat16"),
    "BYTES": ("object", None),
}
NUMPY_TYPES = [name for name, (np_name, _) in TABLE.items() if np_name is not None]
TORCH_TYPES = [name for name, (_, torch_name) in TABLE.items() if torch_name is not None]


def test_the_table_covers_every_triton_type():
    config_names = {name for name in mc.DataType.keys() if name != "TYPE_INVALID"}
    assert {row.config_name for row in DTYPES.values()} == config_names
    assert set(DTYPES) == set(TABLE)


# ----------------------------------------------------------------------------- dtype table
@pytest.mark.parametrize("name", list(TABLE))
def test_wire_and_config_names_both_ways(name):
    config_name = "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"
    assert DTYPES[name].config_name == config_name
    assert triton_dtype(name) == name
    assert triton_dtype(name.lower()) == name
    assert triton_dtype(config_name) == name
    assert config_dtype(name) == mc.DataType.Value(config_name)
    assert config_dtype(config_name) == mc.DataType.Value(config_name)
    assert triton_dtype(mc.DataType.Value(config_name)) == name  # the enum number, as read from a proto


@pytest.mark.parametrize("name", NUMPY_TYPES)
def test_numpy_both_ways(name):
    np_name = TABLE[name][0]
    assert numpy_dtype(name) == np.dtype(np_name)
    assert triton_dtype(np.dtype(np_name)) == name
    assert triton_dtype(np.dtype(np_name).type) == name
    assert triton_dtype(np.zeros(2, dtype=np_name)) == name
    if name != "BYTES":
        assert triton_dtype(np_name) == name  # NumPy spellings are accepted as strings


@pytest.mark.parametrize("name", TORCH_TYPES)
def test_torch_both_ways(name):
    torch = pytest.importorskip("torch")
    expected = getattr(torch, TABLE[name][1])
    assert torch_dtype(name) is expected
    assert triton_dtype(expected) == name
    assert triton_dtype(torch.zeros(2, dtype=expected)) == name


def test_bf16_comes_through_torch():
    torch = pytest.importorskip("torch")
    tensor = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16)
    assert triton_dtype(tensor) == "BF16"
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="bfloat16.*Fix: pass torch tensors for BF16"):
            numpy_dtype("BF16")
    else:
        host = to_numpy(tensor)
        assert triton_dtype(host) == "BF16"
        assert host.astype(np.float32).tolist() == [[1.5, -2.0]]


@pytest.mark.parametrize(
    "value",
    [
        np.array([b"a", b"bc"], dtype=object),
        np.array(["a", "bc"], dtype=object),
        np.array([b"a", b"bc"]),  # dtype S2
        np.array(["a", "bc"]),  # dtype <U2
        "TYPE_STRING",
        "STRING",
        "bytes",
        str,
        bytes,
    ],
    ids=repr,
)
def test_bytes_spellings(value):
    assert triton_dtype(value) == "BYTES"


def test_torch_has_no_bytes():
    pytest.importorskip("torch")
    with pytest.raises(ConfigError, match="Fix: keep text as NumPy object arrays"):
        torch_dtype("BYTES")


@pytest.mark.parametrize("value", ["FP33", "float31", "TYPE_FLOAT", "complex64"])
def test_unknown_dtype_names_the_fix(value):
    with pytest.raises(ConfigError) as info:
        triton_dtype(value)
    assert "Fix:" in str(info.value)


def test_numpy_dtype_without_triton_type_names_the_fix():
    with pytest.raises(ConfigError, match="has no Triton data type.*Fix: cast the array first"):
        triton_dtype(np.dtype("complex64"))
    with pytest.raises(ConfigError, match="Fix:"):
        triton_dtype(object())


# ----------------------------------------------------------------------------- TensorSpec
def test_tensor_spec_normalizes_and_repr():
    spec = TensorSpec("x", [4, -1], "float32")
    assert spec == TensorSpec(name="x", dims=(4, -1), dtype="TYPE_FP32")
    assert repr(TensorSpec(name="x", dims=(4,), dtype="float32")) == (
        "TensorSpec(name='x', dims=(4,), dtype='FP32', optional=False)"
    )
    assert spec.shape_text(batched=True) == "[-1, 4, -1]"
    assert spec.shape_text(batched=False) == "[4, -1]"
    assert TensorSpec("t", [1], str).dtype == "BYTES"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "dims": [1]}, "non-empty string"),
        ({"name": "x", "dims": [0]}, "Fix: use -1 for a dimension whose size varies"),
        ({"name": "x", "dims": [4, -2]}, "Fix: use -1"),
        ({"name": "x", "dims": ["four"]}, "dims must be a sequence of integers"),
        ({"name": "x", "dims": [1], "dtype": "FP33"}, "unknown data type 'FP33'"),
    ],
)
def test_tensor_spec_rejects(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TensorSpec(**kwargs)


def test_shape_matches():
    assert shape_matches([-1, 3], (7, 3))
    assert not shape_matches([-1, 3], (7, 4))
    assert not shape_matches([3], (1, 3))


# ----------------------------------------------------------------------------- merge / split
def _bytes_arrays(shape):
    return hnp.arrays(object, shape, elements=st.binary(max_size=8) | st.text(max_size=4).map(str.encode))


@st.composite
def request_batches(draw, dtypes=NUMPY_TYPES):
    """Per-request arrays of one dtype and one item shape, with random batch sizes."""
    name = draw(st.sampled_from(dtypes))
    item_shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3))
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    arrays = []
    for size in sizes:
        shape = (size, *item_shape)
        if name == "BYTES":
            arrays.append(draw(_bytes_arrays(shape)))
        else:
            arrays.append(draw(hnp.arrays(np.dtype(TABLE[name][0]), shape)))
    return name, sizes, arrays


def _assert_same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)  # NaN == NaN here, on purpose


@settings(max_examples=150, deadline=None)
@given(request_batches())
def test_merge_split_round_trip_numpy(case):
    name, sizes, arrays = case
    merged = merge(arrays)
    assert merged.shape[0] == sum(sizes)
    assert triton_dtype(merged) == name
    parts = split(merged, sizes)
    assert len(parts) == len(arrays)
    for part, original in zip(parts, arrays):
        _assert_same(part, original)


@settings(max_examples=100, deadline=None)
@given(request_batches(dtypes=[n for n in NUMPY_TYPES if n != "BYTES"]), st.booleans())
def test_merge_split_round_trip_torch(case, as_bf16):
    torch = pytest.importorskip("torch")
    name, sizes, arrays = case
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    if as_bf16:
        name, tensors = "BF16", [t.to(torch.bfloat16) for t in tensors]
    merged = merge(tensors)
    assert isinstance(merged, torch.Tensor)
    assert triton_dtype(merged) == name
    assert merged.shape[0] == sum(sizes)
    for part, original in zip(split(merged, sizes), tensors):
        assert isinstance(part, torch.Tensor)
        assert part.dtype == original.dtype and part.shape == original.shape
        assert torch.equal(part, original) or (part.isnan() == original.isnan()).all()


def test_split_returns_views_for_numpy():
    batch = np.arange(10).reshape(5, 2)
    first, second = split(batch, [2, 3])
    assert np.shares_memory(first, batch) and np.shares_memory(second, batch)


def test_merge_keeps_a_single_request_untouched():
    array = np.ones((2, 2))
    assert merge([array]) is array
    assert split(array, [2])[0] is array


# ----------------------------------------------------------------------------- interchange
def test_array_library_and_to_numpy():
    array = np.ones(3, "float32")
    assert array_library(array) == "numpy"
    assert to_numpy(array) is array
    assert array_library([1, 2]) == "numpy"
    np.testing.assert_array_equal(to_numpy([1, 2]), np.array([1, 2]))


def test_dlpack_between_numpy_and_torch():
    torch = pytest.importorskip("torch")
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = from_dlpack(array, "torch")
    assert array_library(tensor) == "torch"
    assert tensor.data_ptr() == array.ctypes.data  # shared, no copy
    back = from_dlpack(tensor, "numpy")
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, array)
    assert from_dlpack(array, "numpy") is array


# ----------------------------------------------------------------------------- BYTES
def test_as_bytes_array():
    expected = np.array([b"a", "é".encode()], dtype=object)
    for value in (["a", "é"], [b"a", "é".encode()], np.array(["a", "é"]), np.array(["a", "é"], dtype=object)):
        out = as_bytes_array(value)
        assert out.dtype == object
        assert out.tolist() == expected.tolist()
    assert as_bytes_array(np.array([b"x", b"yz"])).tolist() == [b"x", b"yz"]


def test_non_text_elements_are_encoded_as_tritonclient_does():
    # tritonclient's serialize_byte_tensor: bytes as they are, anything else as str(x) in UTF-8.
    assert as_bytes_array([1, 2.5, b"x", bytearray(b"y")]).tolist() == [b"1", b"2.5", b"x", b"y"]
    assert deserialize_bytes(serialize_bytes(np.array([7, "é"], dtype=object)), [2]).tolist() == [b"7", "é".encode()]


def test_serialize_bytes_layout_is_tritons():
    buffer = serialize_bytes(np.array([b"ab", "c"], dtype=object))
    assert buffer == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


@settings(max_examples=150, deadline=None)
@given(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4).flatmap(_bytes_arrays))
def test_bytes_round_trip(array):
    buffer = serialize_bytes(array)
    back = deserialize_bytes(buffer, array.shape)
    assert back.dtype == object and back.shape == array.shape
    assert back.tolist() == array.tolist()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=5), min_size=1, max_size=5))
def test_str_elements_come_back_as_utf8(texts):
    array = np.array(texts + [""], dtype=object)[:-1]  # keep an object array of str
    back = deserialize_bytes(serialize_bytes(array), [len(texts)])
    assert back.tolist() == [t.encode("utf-8") for t in texts]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=6), min_size=1, max_size=5), st.data())
def test_truncated_bytes_buffers_are_rejected(items, data):
    array = np.empty(len(items), dtype=object)
    array[:] = items
    buffer = serialize_bytes(array)
    cut = data.draw(st.integers(0, len(buffer) - 1))
    with pytest.raises(InvalidInput, match="BYTES"):
        deserialize_bytes(buffer[:cut], [len(items)])


def test_bytes_errors_name_the_tensor_and_the_fix():
    buffer = serialize_bytes(np.array([b"abc", b"de"], dtype=object))
    with pytest.raises(InvalidInput) as info:
        deserialize_bytes(buffer[:3], [2], tensor="text", model="tok")
    message = str(info.value)
    assert "tensor 'text' of model 'tok'" in message
    assert "Fix: send each element as a 4-byte little-endian length" in message
    with pytest.raises(InvalidInput, match="longer than the data sent"):
        deserialize_bytes(buffer[:-1], [2])
    with pytest.raises(InvalidInput, match="longer than its shape"):
        deserialize_bytes(buffer + b"x", [2])
    with pytest.raises(InvalidInput, match="longer than its shape"):
        deserialize_bytes(buffer, [1])


@pytest.mark.parametrize("arrays", [
    [np.arange(4, dtype=np.float32).reshape(1, 4), np.ones((2, 4), np.float32)],  # joined as bytes
    [np.ones((1, 4), np.float32), np.ones((4, 8), np.float32)[:, ::2]],  # not contiguous
    [np.ones((1, 4), np.float32), np.ones((1, 4), np.float64)],  # dtypes differ
    [np.ones((1, 2), np.dtype(">f4")), np.ones((1, 2), np.dtype(">f4"))],  # big-endian, one dtype
    [np.zeros((1, 0), np.int64), np.zeros((2, 0), np.int64)],  # no bytes at all
    [np.array([[b"a"]], dtype=object), np.array([[b"bc"]], dtype=object)],  # BYTES
    [np.array([[True]]), np.array([[False], [True]])],
])
def test_merge_equals_concatenate_and_is_writable(arrays):
    merged = merge(arrays)
    expected = np.concatenate(arrays, axis=0)
    assert merged.dtype == expected.dtype and merged.shape == expected.shape
    np.testing.assert_array_equal(merged, expected)
    assert merged.flags.writeable  # models may change their inputs in place
    merged[...] = merged  # and writing must not reach the requests' own arrays
    np.testing.assert_array_equal(arrays[0], expected[: len(arrays[0])])


def test_merge_refuses_shapes_that_only_add_up():
    # 1x2 + 1x4 + 2x1 holds exactly as many elements as 4 rows of 2: never joined as bytes.
    arrays = [np.ones((1, 2), np.float32), np.ones((1, 4), np.float32), np.ones((2, 1), np.float32)]
    with pytest.raises(ValueError):
        merge(arrays)


def test_merge_of_an_array_subclass_is_concatenate():
    plain = np.arange(4, dtype=np.float32).reshape(1, 4)
    masked = np.ma.masked_array(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(merge([plain, masked]), np.concatenate([plain, masked]))

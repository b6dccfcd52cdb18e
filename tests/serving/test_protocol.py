"""The v2 codec: JSON and binary tensor data, both directions, checked against tritonclient's own codec."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nbserve.errors import InvalidInput
from nbserve.serving import protocol
from nbserve.serving.core import InferResult
from nbserve.serving.protocol import (
    InferRequest,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    parse_header_length,
)
from nbserve.tensors import DTYPES, serialize_bytes

NUMERIC = [name for name in DTYPES if name not in ("BYTES", "BF16")]
ALL = [*NUMERIC, "BF16", "BYTES"]

# Shapes of rank 1 to 4, zero-sized dimensions included; rank 0 is tested on its own below.
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4)


def _dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "BF16" else DTYPES[name].numpy


@st.composite
def tensors(draw, name: str, *, json: bool = False, shape=shapes):
    """An array of Triton type ``name`` (JSON BYTES hold UTF-8 text: JSON strings cannot carry other bytes)."""
    shape = draw(shape)
    if name == "BYTES":
        items = st.text(max_size=6).map(str.encode) if json else st.binary(max_size=6)
        values = draw(st.lists(items, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if name == "BF16":
        floats = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32)))
        return floats.astype(ml_dtypes.bfloat16)
    return draw(hnp.arrays(_dtype(name), shape))


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert [bytes(x) for x in got.reshape(-1)] == [bytes(x) for x in want.reshape(-1)]
        return
    assert got.dtype == want.dtype
    # NaN compares equal to NaN here; the binary test also compares raw bytes.
    if want.dtype.kind == "f" or want.dtype == np.dtype(ml_dtypes.bfloat16):
        np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))
    else:
        np.testing.assert_array_equal(got, want)


def result(outputs: dict, *, id: str = "", parameters: dict | None = None) -> InferResult:
    return InferResult(model_name="m", model_version=3, outputs=outputs, id=id, parameters=parameters or {})


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", ALL)
@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_request_round_trip_binary(name, data):
    x = data.draw(tensors(name))
    y = data.draw(tensors("FP32"))
    body, header_length = encode_request({"x": x, "y": y}, binary=True)
    request = decode_request(body, parse_header_length(str(header_length), len(body)))
    assert list(request.inputs) == ["x", "y"]
    assert_same(request.inputs["x"], x)
    assert_same(request.inputs["y"], y)
    if name != "BF16":
        assert x.dtype == object or request.inputs["x"].tobytes() == np.ascontiguousarray(x).tobytes()


@pytest.mark.parametrize("name", [n for n in ALL if n != "BF16"])
@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_request_round_trip_json(name, data):
    x = data.draw(tensors(name, json=True))
    body, header_length = encode_request({"x": x}, binary=False, outputs=["out"], binary_outputs=False)
    assert header_length is None
    request = decode_request(body)
    assert_same(request.inputs["x"], x)
    assert request.outputs == ["out"] and request.binary_outputs == {"out": False}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_response_round_trip(name, binary, data):
    out = data.draw(tensors(name, json=not binary))
    other = data.draw(tensors("INT64", json=not binary))
    request = InferRequest(inputs={}, binary_data_output=binary)
    body, header_length = encode_response(result({"out": out, "other": other}, id="r1"), request)
    assert header_length is None or binary
    decoded = decode_response(body, header_length)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "3", "r1")
    if name == "BF16" and not binary:  # JSON carries BF16 as numbers (Triton refuses; we are lenient)
        np.testing.assert_array_equal(decoded.outputs["out"].astype(np.float32), out.astype(np.float32))
    else:
        assert_same(decoded.outputs["out"], out)
    assert_same(decoded.outputs["other"], other)


@pytest.mark.parametrize("name", ALL)
@given(data=st.data())
@settings(max_examples=15, deadline=None)
def test_tritonclient_request_decodes(name, data):
    """Bodies built by tritonclient.http itself decode to the arrays it was given."""
    binary = data.draw(st.booleans()) or name == "BF16"
    x = data.draw(tensors(name, json=not binary))
    infer_input = httpclient.InferInput("x", list(x.shape), name)
    infer_input.set_data_from_numpy(x, binary_data=binary)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [infer_input], request_id="abc", priority=2, timeout=5000, parameters={"custom": "v", "n": 1}
    )
    request = decode_request(body, header_length)
    assert_same(request.inputs["x"], x)
    assert request.id == "abc" and request.priority == 2 and request.timeout_us == 5000
    assert request.parameters == {"custom": "v", "n": 1}
    assert request.outputs is None and request.binary_data_output is True


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@given(data=st.data())
@settings(max_examples=15, deadline=None)
def test_tritonclient_parses_response(name, binary, data):
    """tritonclient.http parses our responses (as_numpy) to the arrays the model returned."""
    if name in ("BF16",) and not binary:
        return  # tritonclient cannot read BF16 from JSON
    out = data.draw(tensors(name, json=not binary))
    request = InferRequest(inputs={}, outputs=["out"], binary_outputs={"out": binary})
    body, header_length = encode_response(result({"out": out}), request)
    parsed = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    got = parsed.as_numpy("out")
    if name == "BYTES":  # tritonclient gives str for JSON BYTES, bytes for binary ones
        assert got.shape == out.shape
        assert [v.encode() if isinstance(v, str) else v for v in got.reshape(-1)] == list(out.reshape(-1))
    else:
        assert_same(got, out)
    assert parsed.get_response()["model_version"] == "3"


def test_rank0_tensors_round_trip():
    for binary in (True, False):
        x = np.array(2.5, dtype=np.float32)
        body, header_length = encode_request({"x": x}, binary=binary)
        got = decode_request(body, header_length).inputs["x"]
        assert got.shape == () and got == 2.5
    body, header_length = encode_response(result({"s": np.array(7, "int32")}), InferRequest(inputs={}))
    assert orjson.loads(body)["outputs"][0] == {"name": "s", "datatype": "INT32", "shape": [], "data": [7]}


def test_json_data_may_be_nested():
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    np.testing.assert_array_equal(decode_request(body).inputs["x"], [[1, 2], [3, 4]])


def test_json_null_float_is_nan_and_bf16_json_accepted():
    body = orjson.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2], "data": [None, 1.5]},
        {"name": "b", "datatype": "BF16", "shape": [1], "data": [0.5]},
        {"name": "t", "datatype": "BOOL", "shape": [3], "data": [True, 0, 1]},
    ]})
    inputs = decode_request(body).inputs
    assert np.isnan(inputs["x"][0]) and inputs["x"][1] == 1.5
    assert inputs["b"].dtype == np.dtype(ml_dtypes.bfloat16) and float(inputs["b"][0]) == 0.5
    assert inputs["t"].tolist() == [True, False, True]


def test_binary_inputs_are_zero_copy_views():
    x = np.arange(1000, dtype=np.float32)
    body, header_length = encode_request({"x": x})
    got = decode_request(body, header_length).inputs["x"]
    assert got.base is not None and not got.flags.writeable
    np.testing.assert_array_equal(got, x)
    writable = bytearray(body)
    got = decode_request(writable, header_length).inputs["x"]
    got[0] = -1  # a view: writes land in the body
    assert np.frombuffer(writable, np.float32, 1, header_length)[0] == -1


# ----------------------------------------------------------------------------- response details
def test_response_matches_triton_layout():
    request = InferRequest(inputs={}, outputs=["a", "b"], binary_outputs={"a": True, "b": False})
    body, header_length = encode_response(
        result({"a": np.arange(3, dtype="int32"), "b": np.array([b"x", b"yz"], dtype=object)},
               id="q", parameters={"sequence_id": 4}),
        request,
    )
    header = orjson.loads(body[:header_length])
    assert header == {
        "id": "q",
        "model_name": "m",
        "model_version": "3",
        "parameters": {"sequence_id": 4},
        "outputs": [
            {"name": "a", "datatype": "INT32", "shape": [3], "parameters": {"binary_data_size": 12}},
            {"name": "b", "datatype": "BYTES", "shape": [2], "data": ["x", "yz"]},
        ],
    }
    assert body[header_length:] == np.arange(3, dtype="<i4").tobytes()


def test_response_without_id_or_binary_is_plain_json():
    body, header_length = encode_response(result({"a": np.ones((2, 2), "float32")}), None)
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m", "model_version": "3",
        "outputs": [{"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 1.0, 1.0, 1.0]}],
    }


def test_binary_bytes_output_uses_length_prefixes():
    out = np.array([b"ab", b"", b"\xff"], dtype=object)
    body, header_length = encode_response(result({"t": out}), InferRequest(inputs={}, binary_data_output=True))
    assert body[header_length:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 1) + b"\xff"
    assert body[header_length:] == serialize_bytes(out)


def test_non_contiguous_and_big_endian_outputs():
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    for binary in (True, False):
        body, header_length = encode_response(result({"a": a}), InferRequest(inputs={}, binary_data_output=binary))
        got = decode_response(body, header_length).outputs["a"]
        np.testing.assert_array_equal(got, a)
        assert got.dtype == np.dtype("<f4")


def test_str_outputs_are_bytes():
    out = np.array(["hé", "x"])
    for binary in (True, False):
        body, header_length = encode_response(result({"t": out}), InferRequest(inputs={}, binary_data_output=binary))
        assert decode_response(body, header_length).outputs["t"].tolist() == ["hé".encode(), b"x"]


def test_classification_matches_triton():
    scores = np.array([[0.1, 0.7, 0.2], [5, 1, 3]], dtype=np.float32)
    request = InferRequest(inputs={}, outputs=["p"], binary_outputs={"p": True}, classification={"p": 2})
    body, header_length = encode_response(result({"p": scores}), request, batched=True, labels={"p": ["a", "b", "c"]})
    parsed = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    assert parsed.as_numpy("p").tolist() == [[b"0.700000:1:b", b"0.200000:2:c"], [b"5.000000:0:a", b"3.000000:2:c"]]
    # Not batched: the whole tensor is one row; integer values print as integers.
    request.classification["p"] = 5
    body, _ = encode_response(result({"p": np.array([3, 9, 1], "int32")}), request, batched=False)
    decoded = decode_response(body, len(body) - sum(4 + len(s) for s in (b"9:1", b"3:0", b"1:2")))
    assert decoded.outputs["p"].tolist() == [b"9:1", b"3:0", b"1:2"]


def test_classification_of_bytes_output_names_the_fix():
    request = InferRequest(inputs={}, outputs=["t"], classification={"t": 1})
    with pytest.raises(InvalidInput, match="classification is not available for BYTES.*class_count"):
        encode_response(result({"t": np.array([b"a"], dtype=object)}), request)


def test_non_utf8_bytes_in_json_output_names_the_fix():
    with pytest.raises(InvalidInput, match="tensor 't'.*not UTF-8.*binary_data=True"):
        encode_response(result({"t": np.array([b"\xff"], dtype=object)}), InferRequest(inputs={}))


def test_requested_output_without_binary_flag_is_json_even_with_binary_data_output():
    request = decode_request(orjson.dumps({
        "inputs": [], "outputs": [{"name": "a"}], "parameters": {"binary_data_output": True},
    }))
    assert request.wants_binary("a") is False and request.wants_binary("unlisted") is True


# ----------------------------------------------------------------------------- errors name the fix
def _json(**header) -> bytes:
    return orjson.dumps(header)


X = {"name": "x", "datatype": "FP32", "shape": [1, 2]}

ERRORS = [
    ("malformed JSON", b'{"inputs": [', None, r"not valid JSON.*Fix: send the JSON inference request"),
    ("not an object", b"[1, 2]", None, r"must be a JSON object.*got list"),
    ("no inputs", _json(id="1"), None, r"no 'inputs' list.*Fix: add the model's inputs"),
    ("unknown datatype", _json(inputs=[{**X, "datatype": "FLOAT"}]), None,
     r"tensor 'x' of model 'm': unknown datatype 'FLOAT'; expected one of BOOL, .*got 'FLOAT'.*model metadata"),
    ("bad shape", _json(inputs=[{**X, "shape": [1, -2], "data": [1, 2]}]), None,
     r"tensor 'x'.*'shape' must be a list of non-negative integers.*got \[1, -2\]"),
    ("count mismatch", _json(inputs=[{**X, "data": [1, 2, 3]}]), None,
     r"tensor 'x'.*'data' does not match 'shape'; expected 2 values for shape \[1, 2\], got 3 values"),
    ("ragged data", _json(inputs=[{**X, "data": [[1], [2, 3]]}]), None, r"tensor 'x'.*does not hold FP32 values"),
    ("text in FP32", _json(inputs=[{**X, "data": ["a", "b"]}]), None, r"tensor 'x'.*does not hold FP32 values"),
    ("fraction in INT32", _json(inputs=[{**X, "datatype": "INT32", "data": [1.5, 2]}]), None,
     r"tensor 'x'.*does not hold INT32 values.*expected integers that fit INT32"),
    ("overflow in UINT8", _json(inputs=[{**X, "datatype": "UINT8", "data": [1, 300]}]), None,
     r"tensor 'x'.*does not hold UINT8 values.*\[0, 255\]"),
    ("number in BYTES", _json(inputs=[{**X, "datatype": "BYTES", "data": ["a", 2]}]), None,
     r"tensor 'x'.*BYTES 'data' must hold strings.*got int 2"),
    ("data and binary", _json(inputs=[{**X, "data": [1, 2], "parameters": {"binary_data_size": 8}}]), None,
     r"tensor 'x'.*exactly one of 'data' and parameters.binary_data_size.*got both"),
    ("neither", _json(inputs=[X]), None, r"tensor 'x'.*exactly one of.*got neither"),
    ("binary size vs shape", _json(inputs=[{**X, "parameters": {"binary_data_size": 4}}]) + b"\0" * 4, "json",
     r"tensor 'x'.*binary_data_size does not match the shape and datatype; expected 8 bytes for FP32 \[1, 2\], "
     r"got 4 bytes.*x.tobytes\(\)"),
    ("body too short", _json(inputs=[{**X, "parameters": {"binary_data_size": 8}}]) + b"\0" * 4, "json",
     r"tensor 'x'.*body ends before this input's binary data; expected 8 bytes.*got 4 bytes left"),
    ("extra bytes", _json(inputs=[{**X, "parameters": {"binary_data_size": 8}}]) + b"\0" * 12, "json",
     r"model 'm': the body has more binary data than the inputs declare; expected 8 bytes.*got 12 bytes"),
    ("binary without header", _json(inputs=[{**X, "parameters": {"binary_data_size": 8}}]), None,
     r"tensor 'x'.*no Inference-Header-Content-Length header.*Fix: with binary tensors, set the HTTP header"),
    ("bytes truncated", _json(inputs=[{**X, "datatype": "BYTES", "parameters": {"binary_data_size": 6}}])
     + struct.pack("<I", 9) + b"ab", "json", r"tensor 'x'.*BYTES element is longer than the data sent"),
    ("bad binary size", _json(inputs=[{**X, "parameters": {"binary_data_size": "8"}}]), None,
     r"tensor 'x'.*binary_data_size must be a non-negative integer"),
    ("duplicate input", _json(inputs=[{**X, "data": [1, 2]}, {**X, "data": [1, 2]}]), None,
     r"tensor 'x'.*appears twice.*send each input once"),
    ("nameless input", _json(inputs=[{"datatype": "FP32", "shape": [1], "data": [1]}]), None,
     r"an input has no 'name'"),
    ("input not object", _json(inputs=[3]), None, r"each entry of 'inputs' must be a JSON object"),
    ("shared memory", _json(inputs=[{**X, "parameters": {"shared_memory_region": "r"}}]), None,
     r"tensor 'x'.*shared-memory tensors are not supported.*set_data_from_numpy"),
    ("reserved parameter", _json(inputs=[], parameters={"triton_x": 1}), None,
     r"parameter 'triton_x'.*reserved for Triton.*rename"),
    ("negative priority", _json(inputs=[], parameters={"priority": -1}), None,
     r"parameter 'priority' must be a non-negative integer.*got -1"),
    ("timeout as text", _json(inputs=[], parameters={"timeout": "5"}), None,
     r"parameter 'timeout' must be a non-negative integer.*microseconds"),
    ("binary_data_output not bool", _json(inputs=[], parameters={"binary_data_output": 1}), None,
     r"parameter 'binary_data_output' must be true or false"),
    ("list parameter", _json(inputs=[], parameters={"p": [1]}), None,
     r"parameter 'p' has invalid type; expected a string, integer, float or boolean, got list"),
    ("id not string", _json(inputs=[], id=5), None, r"'id' must be a string.*got 5"),
    ("outputs not list", _json(inputs=[], outputs={"name": "a"}), None, r"'outputs' must be a list"),
    ("nameless output", _json(inputs=[], outputs=[{"parameters": {}}]), None, r"each requested output needs a 'name'"),
    ("duplicate output", _json(inputs=[], outputs=[{"name": "a"}, {"name": "a"}]), None,
     r"tensor 'a'.*output is requested twice"),
    ("binary_data not bool", _json(inputs=[], outputs=[{"name": "a", "parameters": {"binary_data": "yes"}}]), None,
     r"tensor 'a'.*binary_data must be true or false"),
    ("shm output", _json(inputs=[], outputs=[{"name": "a", "parameters": {"shared_memory_region": "r"}}]), None,
     r"tensor 'a'.*shared-memory outputs are not supported"),
    ("bad class count", _json(inputs=[], outputs=[{"name": "a", "parameters": {"classification": -2}}]), None,
     r"parameter 'classification' must be a non-negative integer"),
]


@pytest.mark.parametrize("body, header, pattern", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_requests_name_the_fix(body, header, pattern):
    header_length = None
    if header == "json":
        header_length = body.index(b"]}") + 2
    with pytest.raises(InvalidInput, match=pattern) as info:
        decode_request(body, header_length, model="m")
    assert info.value.status_code == 400


@pytest.mark.parametrize("value", ["abc", "-1", "999"])
def test_bad_header_length_names_the_fix(value):
    with pytest.raises(InvalidInput, match=r"Inference-Header-Content-Length header must be.*integer from 0 to 10"):
        parse_header_length(value, 10, model="m")


def test_raw_binary_body_is_refused_with_a_fix():
    with pytest.raises(InvalidInput, match="raw binary body.*not supported.*JSON inference header"):
        decode_request(b"\0" * 8, 0, model="m")


def test_bf16_json_input_cannot_be_encoded_client_side():
    with pytest.raises(InvalidInput, match="BF16 tensors must be sent as binary"):
        encode_request({"b": np.zeros(2, ml_dtypes.bfloat16)}, binary=False)


def test_error_body_is_triton_shaped():
    assert orjson.loads(protocol.error_body("boom")) == {"error": "boom"}

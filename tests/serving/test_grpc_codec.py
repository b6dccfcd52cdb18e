"""The gRPC tensor codec against requests built the way real clients build them.

tritonclient builds the raw form (``raw_input_contents``); hand-written clients, grpcurl and other
languages' KServe clients often send typed ``contents``. Responses are read back with tritonclient's
own ``InferResult``, so both directions are checked against the real client code.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import _utils as client_utils
from tritonclient.grpc import service_pb2

from nbserve.errors import InvalidInput
from nbserve.serving._grpc_codec import (
    CONTENTS_FIELD,
    decode_infer_request,
    encode_infer_response,
    parameter_value,
    set_parameter,
)

NUMERIC = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw, datatypes=tuple(NUMERIC) + ("BYTES",)):
    datatype = draw(st.sampled_from(datatypes))
    shape = draw(shapes)
    if datatype == "BYTES":
        flat = draw(st.lists(st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return datatype, array.reshape(shape)
    dtype = NUMERIC[datatype]
    if datatype == "BF16":
        values = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32)))
        return datatype, values.astype(dtype)
    return datatype, draw(hnp.arrays(dtype, shape))


@st.composite
def requests(draw, datatypes=tuple(NUMERIC) + ("BYTES",)):
    count = draw(st.integers(1, 3))
    return [(f"in{i}", *draw(tensors(datatypes))) for i in range(count)]


def client_request(items, **kwargs):
    """A ModelInferRequest exactly as tritonclient.grpc builds it (raw_input_contents)."""
    inputs = []
    for name, datatype, array in items:
        infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    args = dict(model_version="", request_id="", outputs=None, sequence_id=0, sequence_start=False,
                sequence_end=False, priority=0, timeout=None, parameters=None)
    args.update(kwargs)
    return client_utils._get_inference_request("m", inputs, **args)


def typed_request(items):
    """The same tensors in typed ``contents`` fields, as hand-written clients send them."""
    request = service_pb2.ModelInferRequest(model_name="m")
    for name, datatype, array in items:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.reshape(-1).tolist())
    return request


def assert_same(decoded, array):
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype
    if array.dtype == object:
        assert decoded.reshape(-1).tolist() == [bytes(x) for x in array.reshape(-1)]
    else:
        assert decoded.tobytes() == array.tobytes()  # bit-exact, NaNs included


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_raw_round_trip_every_datatype(items):
    decoded = decode_infer_request(client_request(items))
    assert list(decoded.inputs) == [name for name, _, _ in items]
    for name, _datatype, array in items:
        assert_same(decoded.inputs[name], array)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(datatypes=tuple(CONTENTS_FIELD)))
def test_typed_contents_round_trip(items):
    # Serialise and parse, so the message crosses the wire form as a client's would.
    wire = typed_request(items).SerializeToString()
    decoded = decode_infer_request(service_pb2.ModelInferRequest.FromString(wire))
    for name, _datatype, array in items:
        assert_same(decoded.inputs[name], array)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_response_round_trip_through_tritonclient(items):
    outputs = {name: array for name, _, array in items}
    response = encode_infer_response(service_pb2.ModelInferResponse, "m", 3, outputs, id="r1")
    wire = service_pb2.ModelInferResponse.FromString(response.SerializeToString())
    result = grpcclient.InferResult(wire)
    assert wire.model_name == "m" and wire.model_version == "3" and wire.id == "r1"
    for name, datatype, array in items:
        assert result.get_output(name).datatype == datatype
        got = result.as_numpy(name)
        if datatype == "BYTES":
            assert got.shape == array.shape
            assert got.reshape(-1).tolist() == array.reshape(-1).tolist()
        else:
            assert_same(got, array)


def test_raw_inputs_are_not_copied():
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    request = client_request([("x", "FP32", x)])
    decoded = decode_infer_request(request).inputs["x"]
    assert not decoded.flags.owndata  # a view on the request's bytes
    np.testing.assert_array_equal(decoded, x)


def test_response_keeps_requested_output_order_and_subset():
    outputs = {"a": np.zeros(2, np.float32), "b": np.ones(3, np.int64), "c": np.array([b"x"], dtype=object)}
    response = encode_infer_response(service_pb2.ModelInferResponse, "m", 1, outputs, only=["c", "a"])
    assert [t.name for t in response.outputs] == ["c", "a"]
    assert len(response.raw_output_contents) == 2


def test_response_from_non_contiguous_and_big_endian_arrays():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    outputs = {"t": base.T, "be": np.arange(3, dtype=">i4")}
    result = grpcclient.InferResult(encode_infer_response(service_pb2.ModelInferResponse, "m", 1, outputs))
    np.testing.assert_array_equal(result.as_numpy("t"), base.T)
    np.testing.assert_array_equal(result.as_numpy("be"), [0, 1, 2])
    assert result.get_output("be").datatype == "INT32"


def test_response_parameters():
    response = encode_infer_response(service_pb2.ModelInferResponse, "m", 1, {}, parameters={"a": 1, "b": "x"})
    assert parameter_value(response.parameters["a"]) == 1
    assert parameter_value(response.parameters["b"]) == "x"


@pytest.mark.parametrize("value", [True, 7, 2**64 - 1, -3, 1.5, "text"])
def test_parameter_round_trip(value):
    param = service_pb2.InferParameter()
    set_parameter(param, value)
    assert parameter_value(param) == value


def test_request_fields_priority_timeout_outputs_and_id():
    x = np.zeros((1, 4), np.float32)
    request = client_request(
        [("x", "FP32", x)], request_id="abc", priority=2, timeout=1500, model_version="3",
        outputs=[grpcclient.InferRequestedOutput("y")], parameters={"custom": "v", "n": 4},
    )
    decoded = decode_infer_request(request)
    assert (decoded.model, decoded.version, decoded.id) == ("m", "3", "abc")
    assert (decoded.priority, decoded.timeout_us) == (2, 1500)
    assert decoded.outputs == ["y"]
    assert decoded.parameters == {"custom": "v", "n": 4}


# ----------------------------------------------------------------------------- malformed requests
def _raises(request, *words, fix=True):
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(request)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert not fix or "Fix:" in message, message
    return message


def test_raw_length_mismatch_names_the_sizes():
    request = client_request([("x", "FP32", np.zeros((2, 3), np.float32))])
    request.raw_input_contents[0] = b"\0" * 20
    _raises(request, "'x'", "24 bytes", "20 bytes", "FP32")


def test_raw_count_mismatch():
    request = client_request([("x", "FP32", np.zeros(2, np.float32)), ("y", "FP32", np.zeros(2, np.float32))])
    del request.raw_input_contents[1]
    _raises(request, "one entry per input", "2 entries")


def test_truncated_bytes_tensor():
    request = client_request([("s", "BYTES", np.array([b"abc", b"de"], dtype=object))])
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    _raises(request, "'s'", "BYTES", fix=False)  # nbserve.tensors words this one


def test_unknown_datatype():
    request = client_request([("x", "FP32", np.zeros(2, np.float32))])
    request.inputs[0].datatype = "FLOAT"
    _raises(request, "'FLOAT'", "FP32")


def test_typed_contents_count_mismatch():
    request = typed_request([("x", "INT32", np.zeros(3, np.int32))])
    request.inputs[0].shape[:] = [4]
    _raises(request, "int_contents", "4", "3")


def test_typed_contents_out_of_range():
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    _raises(request, "INT8")


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_precision_needs_raw(datatype):
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=[1]).contents.fp32_contents.append(1.0)
    _raises(request, datatype, "raw")


def test_missing_data_and_duplicates_and_mixing():
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    _raises(request, "no data")

    request = typed_request([("x", "FP32", np.zeros(1, np.float32)), ("x", "FP32", np.zeros(1, np.float32))])
    _raises(request, "twice")

    request = client_request([("x", "FP32", np.zeros(1, np.float32))])
    request.inputs[0].contents.fp32_contents.append(1.0)
    _raises(request, "both")


def test_negative_dimension():
    request = typed_request([("x", "FP32", np.zeros(1, np.float32))])
    request.inputs[0].shape[:] = [-1]
    _raises(request, "negative")


def test_bad_priority_shared_memory_and_class_count():
    request = client_request([("x", "FP32", np.zeros(1, np.float32))])
    request.parameters["priority"].string_param = "high"
    _raises(request, "priority")

    request = client_request([("x", "FP32", np.zeros(1, np.float32))])
    request.inputs[0].parameters["shared_memory_region"].string_param = "r"
    _raises(request, "shared-memory")

    request = client_request([("x", "FP32", np.zeros(1, np.float32))],
                             outputs=[grpcclient.InferRequestedOutput("y", class_count=3)])
    request.outputs[0].parameters["classification"].string_param = "3"
    _raises(request, "classification")


def test_classification_request_and_response():
    request = client_request([("x", "FP32", np.zeros((1, 3), np.float32))],
                             outputs=[grpcclient.InferRequestedOutput("y", class_count=2)])
    decoded = decode_infer_request(request)
    assert decoded.classification == {"y": 2}
    scores = np.array([[0.1, 0.7, 0.2], [3, 1, 2]], np.float32)
    response = encode_infer_response(service_pb2.ModelInferResponse, "m", 1, {"y": scores},
                                     classification=decoded.classification, batched=True)
    result = grpcclient.InferResult(response)
    assert result.as_numpy("y").tolist() == [[b"0.700000:1", b"0.200000:2"], [b"3.000000:0", b"2.000000:2"]]

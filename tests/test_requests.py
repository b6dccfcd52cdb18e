"""InputChecker: its fast paths agree with the full check on every request they accept, and hand
every request they do not accept to it (same arrays, rows, shape key, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from nbserve.config import parse
from nbserve.errors import InvalidInput
from nbserve.requests import InputChecker, check_inputs

SINGLE = parse("""
name: "single"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
""")
PAIR = parse("""
name: "pair"
max_batch_size: 8
input [ { name: "a" data_type: TYPE_INT64 dims: [ 2, 3 ] }, { name: "b" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
""")
UNBATCHED = parse("""
name: "unbatched"
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
""")


def _full(config, inputs):
    """What the general check makes of a request: arrays, rows and key, computed from scratch."""
    checked = check_inputs(config, inputs)
    if config.max_batch_size <= 0:
        return checked, 1, ()
    first = next(iter(checked.values()))
    return checked, first.shape[0], tuple(tuple(checked[t.name].shape[1:]) for t in config.input)


@pytest.mark.parametrize("inputs", [
    {"x": np.ones((1, 4), np.float32)},
    {"x": np.ones((8, 4), np.float32)},
    {"x": np.ones((3, 4), np.dtype("=f4"))},  # equal to the declared dtype, maybe not the same object
    {"x": np.ones((3, 4), np.float32)[:, ::-1]},  # a strided view
    {"x": [[1.0, 2.0, 3.0, 4.0]]},  # a list: converted by the full check
])
def test_single_input_fast_path_agrees_with_the_full_check(inputs):
    checker = InputChecker(SINGLE)
    checked, rows, key = checker.prepare(inputs)
    want_checked, want_rows, want_key = _full(SINGLE, inputs)
    assert rows == want_rows and key == want_key
    assert np.array_equal(checked["x"], want_checked["x"]) and checked["x"].dtype == want_checked["x"].dtype


def test_requests_of_one_model_share_one_shape_key():
    checker = InputChecker(SINGLE)
    keys = {id(checker.prepare({"x": np.ones((n, 4), np.float32)})[2]) for n in (1, 2, 5)}
    assert len(keys) == 1  # batch formation compares it by identity first


@pytest.mark.parametrize("inputs, message", [
    ({"x": np.ones((1, 5), np.float32)}, r"wrong shape.*\[-1, 4\].*\[1, 5\]"),
    ({"x": np.ones((4,), np.float32)}, r"wrong shape.*x\[None\]"),
    ({"x": np.ones((1, 4), np.float64)}, r"dtype.*FP64.*astype"),
    ({"x": np.ones((1, 4), np.dtype(">f4"))}, r"dtype >f4.*astype"),  # byte-swapped
    ({"x": np.ones((9, 4), np.float32)}, r"max_batch_size"),
    ({"x": np.ones((0, 4), np.float32)}, r"empty batch"),
    ({"x": np.ones((1, 4), np.float32), "z": np.ones(1)}, r"unexpected input 'z'"),
    ({}, r"missing input 'x'"),
    ([np.ones((1, 4), np.float32)], r"dict of arrays"),
])
def test_single_input_errors_are_the_full_checks(inputs, message):
    with pytest.raises(InvalidInput, match=message) as fast:
        InputChecker(SINGLE).prepare(inputs)
    with pytest.raises(InvalidInput) as full:
        check_inputs(SINGLE, inputs)
    assert str(fast.value) == str(full.value)


@pytest.mark.parametrize("rows, width", [(1, 1), (2, 7), (8, 3)])
def test_several_inputs_and_variable_dims_keep_their_key(rows, width):
    inputs = {"a": np.ones((rows, 2, 3), np.int64), "b": np.ones((rows, width), np.float32)}
    _, got_rows, key = InputChecker(PAIR).prepare(inputs)
    assert (got_rows, key) == _full(PAIR, inputs)[1:] == (rows, ((2, 3), (width,)))


def test_unbatched_model_has_one_row_and_no_key():
    inputs = {"x": np.ones(4, np.float32)}
    assert InputChecker(UNBATCHED).prepare(inputs)[1:] == (1, ())
    with pytest.raises(InvalidInput, match="wrong shape"):
        InputChecker(UNBATCHED).prepare({"x": np.ones((1, 4), np.float32)})

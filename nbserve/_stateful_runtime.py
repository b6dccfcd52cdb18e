"""Runs a stateful Python function (inputs and state in, outputs and new state out) on a batch.

This module is the single implementation of how a function registered with
``nbserve.register_stateful`` is called: the kernel's runner is :class:`StatefulRunner`, and the
repository writer copies this source verbatim into the exported ``model.py`` (after nbserve's
``_python_runtime``), so Triton calls the function exactly as the notebook did. It must therefore
import nothing but NumPy, the standard library and the Python runtime's helpers (the import between
the markers below is dropped in ``model.py``, where those helpers are defined above it).

:class:`SequenceStore` exists for Triton: its Python backend hands a model the *initial* implicit
state on every request but never stores the output state (checked against Triton 2.51), so the
exported model keeps each sequence's state itself, keyed by the request's correlation id.
"""

import time

import numpy as np

# nbserve-runtime-imports-begin
from .backends._python_runtime import (
    NUMPY_NAMES,
    _stack,
    _to_output_array,
    accepts_keywords,
    run_requests,
)

# nbserve-runtime-imports-end


class StatefulRunner:
    """Call ``fn`` with the model inputs, the states (by state name) and any control inputs it names.

    Args:
        fn: the user's function. It returns a dict (outputs and new states by name), or a tuple
            whose last items are the new states in ``states`` order.
        input_names: the model inputs, in the function's order.
        states: one dict per state: ``name`` (the function's parameter), ``input_name``,
            ``output_name``, ``dims``, ``dtype`` (wire name) and ``initial`` (one item).
        output_names: names for the outputs of a tuple result (``output_i`` when not given).
        output_dtypes: wire dtypes by output name, to cast Python results.
        controls: the control inputs the function takes: ``name``, ``dtype``, ``true`` value (used
            when a request comes without them: a direct call is a one-step sequence).
        batched: the function takes whole batches; else one item at a time (rows are looped).
        batch_dim: the model has a batch dimension (``max_batch_size`` > 0).
    """

    def __init__(self, fn, input_names, states, output_names=None, output_dtypes=None, controls=(), batched=True,
                 keyword=None, batch_dim=True):
        self.fn = fn
        self.input_names = list(input_names)
        self.states = []
        for state in states:
            state = dict(state)
            if state.get("initial") is not None:
                dtype = object if state["dtype"] == "BYTES" else NUMPY_NAMES[state["dtype"]]
                state["initial"] = np.asarray(state["initial"], dtype=dtype)
            self.states.append(state)
        self.controls = [dict(c) for c in controls]
        self.param_names = self.input_names + [s["name"] for s in self.states] + [c["name"] for c in self.controls]
        self.output_names = list(output_names) if output_names else None
        self.output_dtypes = dict(output_dtypes or {})
        for state in self.states:
            self.output_dtypes.setdefault(state["output_name"], state["dtype"])
        self.batched = batched
        self.batch_dim = batch_dim
        self.min_rank = 2 if batch_dim else 1
        self.keyword = accepts_keywords(fn, self.param_names) if keyword is None else keyword

    # ------------------------------------------------------------------ arguments
    def _rows(self, inputs):
        for name in self.input_names:
            if name in inputs:
                return len(inputs[name])
        return 1

    def arguments(self, inputs):
        """The function's arguments by parameter name; missing states and controls get defaults."""
        rows = self._rows(inputs) if self.batch_dim else None
        args = {n: inputs[n] for n in self.input_names if n in inputs}
        for state in self.states:
            value = inputs.get(state["input_name"])
            if value is None:  # called outside a sequence: start from the initial state
                initial = state["initial"]
                if initial is None:
                    raise ValueError(f"no state '{state['input_name']}' was handed in and none is known to start from")
                value = np.repeat(initial[None], rows, axis=0) if rows is not None else initial.copy()
            args[state["name"]] = value
        for control in self.controls:
            value = inputs.get(control["name"])
            if value is None:
                shape = (rows, 1) if rows is not None else (1,)
                dtype = object if control["dtype"] == "BYTES" else NUMPY_NAMES[control["dtype"]]
                value = np.full(shape, control["true"], dtype=dtype)
            args[control["name"]] = value
        return args

    def _call(self, args):
        if self.keyword:
            return self.fn(**args)
        return self.fn(*[args[n] for n in self.param_names if n in args])

    # ------------------------------------------------------------------ results
    def name_outputs(self, result):
        """Outputs and new states by output name, from a dict or a tuple result."""
        by_state = {}
        for state in self.states:
            by_state[state["name"]] = state["output_name"]
            by_state[state["output_name"]] = state["output_name"]
        if isinstance(result, dict):
            named = {}
            for key, value in result.items():
                key = str(key)
                named[by_state.get(key, key)] = value
        else:
            values = list(result) if _is_multi(result) else [result]
            count = len(self.states)
            if len(values) < count:
                raise ValueError(
                    f"the function returned {len(values)} value(s) but has {count} state(s) to return; return "
                    "(outputs..., new_state, ...) or a dict {name: array} that includes "
                    + ", ".join(repr(s["name"]) for s in self.states)
                )
            outputs, states = values[: len(values) - count], values[len(values) - count:]
            names = self.output_names or [f"output_{i}" for i in range(len(outputs))]
            if len(names) != len(outputs):
                raise ValueError(
                    f"the function returned {len(outputs)} output(s) besides its state but {len(names)} are declared "
                    f"({', '.join(names)}); return a dict {{name: array}} or fix outputs=[...]"
                )
            named = dict(zip(names, outputs))
            named.update({s["output_name"]: v for s, v in zip(self.states, states)})
        missing = [s["name"] for s in self.states if s["output_name"] not in named]
        if missing:
            raise ValueError(
                f"the function did not return its new state {', '.join(repr(m) for m in missing)}: "
                "return it in the dict under the state's name, or last in the tuple"
            )
        return named

    def __call__(self, inputs):
        args = self.arguments(inputs)
        if self.batched or not self.batch_dim:
            named = self.name_outputs(self._call(args))
        else:
            rows = self._rows(args)
            per_item = [self.name_outputs(self._call({k: v[i] for k, v in args.items()})) for i in range(rows)]
            named = {k: _stack([item[k] for item in per_item]) for k in per_item[0]} if per_item else {}
        out = {}
        for key, value in named.items():
            array = _to_output_array(value, self.output_dtypes.get(key))
            while array.ndim < self.min_rank:
                array = array.reshape(tuple(array.shape) + (1,))
            out[key] = array
        return out


def _is_multi(result):
    if isinstance(result, tuple):
        return True
    return isinstance(result, list) and bool(result) and all(hasattr(v, "shape") for v in result)


class SequenceStore:
    """Each live sequence's state by correlation id, for Triton's Python backend.

    On a sequence's first request (START) the state Triton hands in is the configured initial state
    and is used as it is; on later requests it is replaced by the state this store kept from the
    previous step. A sequence's state is dropped at END and after ``idle_s`` without requests
    (Triton releases the sequence by then; kept twice as long, so a live sequence never loses it).
    """

    def __init__(self, states, idle_s):
        self.states = [dict(s) for s in states]
        self.keep_s = 2 * idle_s + 1.0
        self._store = {}

    def __len__(self):
        return len(self._store)

    def expire(self, now=None):
        now = time.monotonic() if now is None else now
        for key in [k for k, (seen, _) in self._store.items() if now - seen > self.keep_s]:
            del self._store[key]

    def load(self, corr, tensors, start):
        """Replace the handed-in state with the sequence's stored one (unless it starts here)."""
        if start:
            self._store.pop(corr, None)
            return
        entry = self._store.get(corr)
        if entry is not None:
            tensors.update(entry[1])

    def save(self, corr, outputs, end):
        if end:
            self._store.pop(corr, None)
            return
        self._store[corr] = (time.monotonic(), {
            s["input_name"]: np.array(outputs[s["output_name"]], copy=True) for s in self.states
        })


def run_grouped(runner, requests_inputs):
    """``run_requests`` over groups of requests whose tensors can be merged (same item shapes):
    sequences with variable-size states (dims -1) of different lengths run in separate calls."""
    groups = {}
    for position, tensors in enumerate(requests_inputs):
        key = tuple((name, tuple(getattr(value, "shape", ())[1:])) for name, value in sorted(tensors.items()))
        groups.setdefault(key, []).append(position)
    results = [None] * len(requests_inputs)
    for positions in groups.values():
        for position, outputs in zip(positions, run_requests(runner, [requests_inputs[p] for p in positions])):
            results[position] = outputs
    return results


def control_flag(tensors, control):
    """True when a START/END control input (``[name, true_value]``) is set in a request."""
    if not control:
        return False
    value = tensors.get(control[0])
    return value is not None and bool(np.asarray(value).reshape(-1)[0] == control[1])

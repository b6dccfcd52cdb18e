"""Runs a native model file the way Triton's native backend would: ONNX Runtime, TorchScript, Treelite.

``nbserve.export(..., portable=True)`` copies this module's source verbatim into each portable
``model.py`` (after nbserve/backends/_python_runtime.py, which merges and splits the batch), so the
Python backend of any Triton build can serve ``model.onnx``, ``model.pt`` or a FIL tree file without
the onnxruntime, pytorch or fil backend. nbserve reads the same ``model.py`` back (subprocess mode,
``read_repository``), so the notebook checks the code that runs in production.

The native config travels next to the model file as JSON (:data:`SIDECAR_FILE`): its tensors (with
any ``reshape``), ``max_batch_size`` and backend ``parameters``. Every rule here mirrors the native
backend: Triton's ``reshape`` between the config's dims and the model's shape; the PyTorch backend's
binding of config names to ``forward()`` arguments (argument names, then ``<name>__<index>``, else
config order) and of outputs (``<name>__<index>``, else order); FIL's ``output_class``,
``predict_proba`` and ``threshold``.

It must import nothing but NumPy and the standard library at the top: each framework is imported
inside the class that needs it, so a model only needs its own framework installed. No names here
may collide with _python_runtime's (both are pasted into one file).
"""

import os

import numpy as np

SIDECAR_FILE = "nbserve_portable.json"

PORTABLE_NUMPY_TYPES = {
    "TYPE_BOOL": "bool", "TYPE_UINT8": "uint8", "TYPE_UINT16": "uint16", "TYPE_UINT32": "uint32",
    "TYPE_UINT64": "uint64", "TYPE_INT8": "int8", "TYPE_INT16": "int16", "TYPE_INT32": "int32",
    "TYPE_INT64": "int64", "TYPE_FP16": "float16", "TYPE_FP32": "float32", "TYPE_FP64": "float64",
}

# FIL's default file name for each model_type (fil_backend docs/model_config.md).
FIL_MODEL_FILES = {
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "xgboost": "xgboost.model",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}


class PortableShapes:
    """Triton's ``reshape``: config dims on the wire, the model's own shape inside the model."""

    def __init__(self, native):
        self.batched = int(native.get("max_batch_size", 0)) > 0
        self.input_shapes = {t["name"]: tuple(t["reshape"]) for t in native["input"] if t.get("reshape") is not None}
        self.output_dims = {t["name"]: tuple(t["dims"]) for t in native["output"] if t.get("reshape") is not None}
        self.output_types = {t["name"]: PORTABLE_NUMPY_TYPES.get(t["data_type"]) for t in native["output"]}

    def _lead(self, array):
        return (array.shape[0],) if self.batched else ()

    def to_model(self, name, array):
        shape = self.input_shapes.get(name)
        return array if shape is None else array.reshape(self._lead(array) + shape)

    def to_config(self, name, array):
        dims = self.output_dims.get(name)
        if dims is not None:
            array = array.reshape(self._lead(array) + dims)
        dtype = self.output_types.get(name)
        # The native backends return the config's data type; a model that computes in another one
        # would be refused there, so cast rather than send Triton a mismatching tensor.
        if dtype is not None and array.dtype != np.dtype(dtype):
            array = array.astype(dtype)
        return array


class PortableOnnxModel:
    """An ONNX Runtime session over the config's tensor names (the written graph uses them)."""

    def __init__(self, native, path, gpu=False, device_id=0):
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers = [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
        self.session = onnxruntime.InferenceSession(path, providers=providers)
        self.shapes = PortableShapes(native)
        self.outputs = [t["name"] for t in native["output"]]

    def __call__(self, inputs):
        feeds = {name: self.shapes.to_model(name, np.asarray(array)) for name, array in inputs.items()}
        results = self.session.run(self.outputs, feeds)
        return {name: self.shapes.to_config(name, result) for name, result in zip(self.outputs, results)}


def portable_named_index(name):
    """The ``<index>`` of ``<name>__<index>`` (after the first ``__``), as the PyTorch backend reads it."""
    start = name.find("__")
    if start == -1:
        return None
    index = name[start + 2:]
    return int(index) if index.isdigit() else None


def portable_input_positions(names, forward_args):
    if names and all(n in forward_args for n in names):
        return [list(forward_args).index(n) for n in names]
    indices = [portable_named_index(n) for n in names]
    if names and all(i is not None for i in indices):
        return indices
    return list(range(len(names)))


def portable_output_positions(names):
    indices = [portable_named_index(n) for n in names]
    if names and all(i is not None for i in indices):
        return indices
    return list(range(len(names)))


class PortableTorchModel:
    """A TorchScript module called with positional tensors, bound as Triton's PyTorch backend binds them."""

    def __init__(self, native, path, gpu=False, device_id=0):
        import torch

        self.torch = torch
        use_gpu = gpu and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{int(device_id)}" if use_gpu else "cpu")
        self.module = torch.jit.load(path, map_location=self.device).eval()
        schema = getattr(self.module.forward, "schema", None)
        forward_args = [a.name for a in schema.arguments[1:]] if schema is not None else []
        self.input_names = [t["name"] for t in native["input"]]
        self.input_positions = portable_input_positions(self.input_names, forward_args)
        self.output_names = [t["name"] for t in native["output"]]
        self.output_positions = portable_output_positions(self.output_names)
        self.shapes = PortableShapes(native)

    def _tensor(self, name, array):
        array = self.shapes.to_model(name, np.asarray(array))
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, copy=True, order="C")  # torch shares memory with writable arrays only
        return self.torch.from_numpy(array).to(self.device)

    def __call__(self, inputs):
        args = [None] * len(self.input_names)
        for name, position in zip(self.input_names, self.input_positions):
            if name in inputs:
                args[position] = self._tensor(name, inputs[name])
        with self.torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, dict):
            flat = list(result.values())
        elif isinstance(result, (tuple, list)):
            flat = list(result)
        else:
            flat = [result]
        return {
            name: self.shapes.to_config(name, flat[position].detach().cpu().numpy())
            for name, position in zip(self.output_names, self.output_positions)
        }


class PortableTreeModel:
    """A FIL model run with Treelite's GTIL on the CPU, finished as FIL's parameters say."""

    def __init__(self, native, path, gpu=False, device_id=0):
        import treelite
        import treelite.gtil

        params = native.get("parameters", {})
        model_type = params.get("model_type", "xgboost")
        allow_unknown = params.get("xgboost_allow_unknown_field", "false").lower() == "true"
        if model_type in ("xgboost_json", "xgboost_ubj"):
            choice = "json" if model_type == "xgboost_json" else "ubjson"
            self.model = treelite.frontend.load_xgboost_model(path, format_choice=choice,
                                                              allow_unknown_field=allow_unknown)
        elif model_type == "xgboost":
            self.model = treelite.frontend.load_xgboost_model_legacy_binary(path)
        elif model_type == "lightgbm":
            self.model = treelite.frontend.load_lightgbm_model(path)
        else:
            self.model = treelite.Model.deserialize(path)
        self.gtil = treelite.gtil
        self.input_name = native["input"][0]["name"]
        self.output_name = native["output"][0]["name"]
        self.batched = int(native.get("max_batch_size", 0)) > 0
        dims = native["output"][0]["dims"]
        self.width = int(np.prod(dims)) if all(int(d) > 0 for d in dims) else 1
        # FIL reads a missing output_class as a classifier.
        self.output_class = params.get("output_class", "true").lower() == "true"
        self.predict_proba = params.get("predict_proba", "false").lower() == "true"
        self.threshold = float(params.get("threshold", "0.5"))

    def finish(self, raw):
        raw = np.asarray(raw, dtype=np.float32).reshape(raw.shape[0], -1)
        if not self.output_class:
            return raw
        if self.predict_proba:
            return np.concatenate([1.0 - raw, raw], axis=1) if raw.shape[1] == 1 and self.width == 2 else raw
        if raw.shape[1] <= 2:  # binary: one probability, or scikit-learn's two
            return (raw[:, -1:] > self.threshold).astype(np.float32)
        return raw.argmax(axis=1).astype(np.float32)[:, None]

    def __call__(self, inputs):
        rows = np.asarray(inputs[self.input_name], dtype=np.float32)
        rows = np.ascontiguousarray(rows.reshape(-1, rows.shape[-1]) if self.batched else rows.reshape(1, -1))
        out = self.finish(self.gtil.predict(self.model, rows))
        return {self.output_name: out if self.batched else out[0]}


PORTABLE_MODELS = {"onnxruntime": PortableOnnxModel, "pytorch": PortableTorchModel, "fil": PortableTreeModel}


def load_portable(native, version_dir, kind="CPU", device_id=0):
    """The runner for the native model described by ``native`` (the sidecar JSON) in ``version_dir``."""
    cls = PORTABLE_MODELS[native["framework"]]
    path = os.path.join(version_dir, native["model_file"])
    runner = cls(native, path, gpu=str(kind).upper().endswith("GPU"), device_id=device_id or 0)
    # run_requests merges requests along the batch only for batching models (as Triton does).
    runner.batch_dim = int(native.get("max_batch_size", 0)) > 0
    return runner

"""Broken Triton repositories, each with the finding ``nbserve validate`` must report.

Every case is a small repository written from text (config.pbtxt, model.py, ...). ``triton`` says
what the real tritonserver (nvidia-pytriton's build: Python backend only) does with the broken model:
True when it refuses to load it (nbserve reports an error), False when it loads it anyway (nbserve
warns), None when that build cannot judge it (native backends) or hangs on it.
tests/e2e/test_export_triton.py loads the judgeable cases in a real tritonserver to keep these
expectations honest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

MODEL_PY = '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", x * 2)]))
        return responses
'''

GOOD_CONFIG = '''\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
'''


def python_model(name: str, config: str | None = None, model_py: str = MODEL_PY) -> dict[str, str]:
    """Files of a working Python-backend model (x -> y = 2x), with an optional replacement config."""
    return {f"{name}/config.pbtxt": config if config is not None else GOOD_CONFIG.format(name=name),
            f"{name}/1/model.py": model_py}


def ensemble(name: str, body: str, max_batch_size: int = 8, version_folder: bool = True) -> dict[str, str]:
    files = {f"{name}/config.pbtxt": f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n{body}'}
    if version_folder:
        files[f"{name}/1/.keep"] = ""
    return files


ENSEMBLE_IO = '''\
input [ { name: "in" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "out" data_type: TYPE_FP32 dims: [ 4 ] } ]
'''


def chain(name: str = "pipe", steps: str = "", io: str = ENSEMBLE_IO, **options: object) -> dict[str, str]:
    return ensemble(name, io + f"ensemble_scheduling {{ step [ {steps} ] }}\n", **options)  # type: ignore[arg-type]


STEP_OK = '{ model_name: "double" model_version: -1 input_map { key: "x" value: "in" } output_map { key: "y" value: "out" } }'


# ----------------------------------------------------------------------------- real model files
def onnx_file(batch: str | int = "N", features: int = 4, elem: str = "FLOAT") -> Callable[[Path], None]:
    """An ONNX graph y = x @ W with input x [batch, features] (written when the case is)."""

    def write(path: Path) -> None:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        kind = getattr(TensorProto, elem)
        weights = numpy_helper.from_array(np.ones((features, 4), dtype=helper.tensor_dtype_to_np_dtype(kind)), "W")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
            [helper.make_tensor_value_info("x", kind, [batch, features])],
            [helper.make_tensor_value_info("y", kind, [batch, 4])], [weights])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))

    return write


def torchscript_file(inputs: int = 2) -> Callable[[Path], None]:
    """A scripted module whose forward takes ``inputs`` tensors named a, b, ..."""

    def write(path: Path) -> None:
        import torch

        names = "abcdefgh"[:inputs]
        namespace: dict = {"torch": torch}
        exec(f"class Sum(torch.nn.Module):\n    def forward(self, {', '.join(f'{n}: torch.Tensor' for n in names)}):\n"
             f"        return {' + '.join(names)}\n", namespace)
        # Traced, not scripted: scripting needs the class's source file, which exec'd code has not.
        example = tuple(torch.ones(1, 4) for _ in names)
        torch.jit.save(torch.jit.trace(namespace["Sum"](), example), str(path))

    return write


def xgboost_file(features: int = 6) -> Callable[[Path], None]:
    """A tiny XGBoost regressor saved as JSON."""

    def write(path: Path) -> None:
        import numpy as np
        import xgboost

        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, features)).astype(np.float32)
        booster = xgboost.train({"max_depth": 2}, xgboost.DMatrix(x, label=x[:, 0]), num_boost_round=2)
        booster.save_model(str(path))

    return write


ONNX_CONFIG = '''\
name: "broken"
platform: "onnxruntime_onnx"
max_batch_size: {mbs}
input [ {{ name: "{input}" data_type: {dtype} dims: [ {dims} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
'''


def onnx_case(mbs: int = 8, input: str = "x", dtype: str = "TYPE_FP32", dims: str = "4", **graph: object) -> dict:
    return {"broken/config.pbtxt": ONNX_CONFIG.format(mbs=mbs, input=input, dtype=dtype, dims=dims),
            "broken/1/model.onnx": onnx_file(**graph)}  # type: ignore[arg-type]


TORCH_CONFIG = '''\
name: "broken"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {inputs} ]
output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ 4 ] }} ]
'''


def torch_case(inputs: list[str], output: str = "OUTPUT__0", forward_inputs: int = 2) -> dict:
    declared = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 4 ] }}' for n in inputs)
    return {"broken/config.pbtxt": TORCH_CONFIG.format(inputs=declared, output=output),
            "broken/1/model.pt": torchscript_file(forward_inputs)}


FIL_CONFIG = '''\
name: "broken"
backend: "fil"
max_batch_size: 8
input [ {{ name: "{input}" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [ {{ name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] }} ]
parameters {{ key: "model_type" value: {{ string_value: "{model_type}" }} }}
parameters {{ key: "output_class" value: {{ string_value: "{output_class}" }} }}
'''


def fil_case(input: str = "input__0", features: int = 6, model_type: str = "xgboost_json",
             output_class: str = "false", file: str = "xgboost.json") -> dict:
    return {"broken/config.pbtxt": FIL_CONFIG.format(input=input, features=features, model_type=model_type,
                                                     output_class=output_class),
            f"broken/1/{file}": xgboost_file()}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | Callable[[Path], None]]
    code: str  # the Issue.code validate must report
    says: tuple[str, ...]  # text the message (str(issue)) must contain
    severity: str = "error"
    triton: bool | None = True  # the real tritonserver refuses (True) or loads (False) the model `broken`
    model: str = "broken"
    line: int | None = None
    needs: tuple[str, ...] = ()  # packages the case's model files are made with

    def write(self, root: Path) -> Path:
        for relative, content in self.files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if callable(content):
                content(path)
            else:
                path.write_text(content)
        return root


CASES = [
    Case("parse-error-unknown-field",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace("max_batch_size: 8", "max_batch_sise: 8")),
         "parse-error", ("broken/config.pbtxt:3", 'no field named "max_batch_sise"', "Fix:"), line=3),
    Case("parse-error-bad-enum",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace('"x" data_type: TYPE_FP32', '"x" data_type: TYPE_FLOAT')),
         "parse-error", ("broken/config.pbtxt:4", "TYPE_FLOAT"), line=4),
    Case("name-mismatch", python_model("broken", GOOD_CONFIG.format(name="other")), "name-mismatch",
         ('name "other" differs from the folder name "broken"', 'set name: "broken"'), line=1),
    Case("no-version-folder", {"broken/config.pbtxt": GOOD_CONFIG.format(name="broken")}, "no-version",
         ("has no version folder", "create broken/1/")),
    Case("missing-model-py", {"broken/config.pbtxt": GOOD_CONFIG.format(name="broken"), "broken/1/notes.txt": "x"},
         # Triton 2.51 waits forever for such a model to load, so the real server is not asked.
         "model-file-missing", ("broken/1/model.py", "model file model.py is missing", "notes.txt"), triton=None),
    Case("dynamic-batching-without-max-batch-size",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace("max_batch_size: 8", "max_batch_size: 0")
                      + "dynamic_batching { }\n"),
         "batching-needs-max-batch-size", ("dynamic_batching needs max_batch_size > 0", "does nothing"),
         severity="warning", triton=False),  # Triton 2.51 loads it and batches nothing
    Case("preferred-batch-size-too-large",
         python_model("broken", GOOD_CONFIG.format(name="broken") + "dynamic_batching { preferred_batch_size: [ 4, 16 ] }\n"),
         "preferred-batch-size", ("preferred_batch_size 16 is outside 1..max_batch_size (8)", "raise max_batch_size to 16"),
         line=6),
    Case("empty-dims",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace('"y" data_type: TYPE_FP32 dims: [ 4 ]',
                                                                          '"y" data_type: TYPE_FP32 dims: [ ]')),
         "empty-dims", ("output 'y' dims", "dims is empty", "dims: [ 1 ]"), line=5),
    Case("zero-dim",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace('"x" data_type: TYPE_FP32 dims: [ 4 ]',
                                                                          '"x" data_type: TYPE_FP32 dims: [ 0 ]')),
         "bad-dims", ("input 'x' dims", "dims [0] has 0", "-1 for a variable size"), line=4),
    Case("reshape-element-count",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace('dims: [ 4 ] } ]\noutput',
                                                                          'dims: [ 4 ] reshape: { shape: [ 3 ] } } ]\noutput')),
         "reshape-size", ("input 'x' reshape", "holds 3 elements, dims [4] hold 4"), line=4),
    Case("no-data-type",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace('"y" data_type: TYPE_FP32 dims', '"y" dims')),
         "no-data-type", ("output 'y' data_type", "has no data_type"), line=5),
    Case("duplicate-input",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace(
             'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]',
             'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]')),
         "duplicate-tensor", ("input 'x' is declared twice",), severity="warning", triton=False),
    Case("version-policy-selects-nothing",
         python_model("broken", GOOD_CONFIG.format(name="broken") + "version_policy { specific { versions: [ 3 ] } }\n"),
         "version-policy", ("selects none of the version folders [1]",), line=6),
    Case("unknown-platform",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace('backend: "python"', 'platform: "onnxruntime"')),
         "unknown-platform", ('unknown platform "onnxruntime"', "onnxruntime_onnx"), line=2),
    Case("platform-backend-mismatch",
         python_model("broken", GOOD_CONFIG.format(name="broken").replace(
             'backend: "python"', 'platform: "onnxruntime_onnx"\nbackend: "python"')),
         "platform-backend-mismatch", ('platform "onnxruntime_onnx" is run by backend "onnxruntime", not "python"',
                                       'Triton uses backend "python"'), severity="warning", triton=False, line=3),
    Case("file-of-another-backend",
         {"broken/config.pbtxt": GOOD_CONFIG.format(name="broken").replace('backend: "python"', 'platform: "pytorch_libtorch"'),
          "broken/1/model.onnx": "not really onnx"},
         "file-backend-mismatch", ("loads model.pt, but the version folder 1/ holds model.onnx",
                                   'platform: "onnxruntime_onnx"'), triton=None),
    Case("model-py-syntax-error", python_model("broken", model_py=MODEL_PY.replace("def execute(self, requests):",
                                                                                      "def execute(self, requests)")),
         "python-syntax", ("broken/1/model.py:6", "does not compile"), line=6),
    Case("model-py-without-class", python_model("broken", model_py="import numpy as np\n\nclass Model:\n    pass\n"),
         "python-model-class", ("defines no class TritonPythonModel",)),
    Case("no-backend", python_model("broken", GOOD_CONFIG.format(name="broken").replace('backend: "python"\n', "")),
         "no-backend", ("neither platform nor backend", 'add backend: "python"'), severity="warning", triton=False),
    Case("no-config", {"broken/1/model.py": MODEL_PY}, "no-config",
         ("has no config.pbtxt", "auto-completes", 'backend: "python"'), severity="warning", triton=False),
    Case("no-config-no-model-file", {"broken/1/weights.bin": "x"}, "no-config",
         ("has no config.pbtxt, and no model file", 'name: "broken"'), triton=None),
    # ----------------------------------------------------------------- ensembles (with a working "double")
    Case("ensemble-step-missing", {**python_model("double"), **chain("broken", STEP_OK.replace('"double"', '"dubble"'))},
         "ensemble-step-missing", ("step 0 runs model 'dubble', which is not in the repository", "did you mean 'double'"),
         line=6),
    Case("ensemble-input-map-unknown",
         {**python_model("double"), **chain("broken", STEP_OK.replace('key: "x"', 'key: "z"'))},
         "ensemble-wiring", ("maps 'in' to 'z', which is not an input of 'double'",)),
    Case("ensemble-output-not-written",
         {**python_model("double"), **chain("broken", STEP_OK.replace('value: "out"', 'value: "tmp"'))},
         "ensemble-wiring", ("ensemble output 'out' is not written by any step",)),
    Case("ensemble-input-unused",
         {**python_model("double"), **chain("broken", STEP_OK, io=ENSEMBLE_IO.replace(
             'input [ { name: "in" data_type: TYPE_FP32 dims: [ 4 ] } ]',
             'input [ { name: "in" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "extra" data_type: TYPE_FP32 dims: [ 1 ] } ]'))},
         "ensemble-wiring", ("ensemble input 'extra' is not used by any step",)),
    Case("ensemble-dtype-mismatch",
         {**python_model("double"), **chain("broken", STEP_OK, io=ENSEMBLE_IO.replace(
             'name: "in" data_type: TYPE_FP32', 'name: "in" data_type: TYPE_INT32'))},
         "ensemble-dtype", ("is TYPE_FP32 but receives TYPE_INT32 from the ensemble input",)),
    Case("ensemble-dims-mismatch",
         {**python_model("double"), **chain("broken", STEP_OK, io=ENSEMBLE_IO.replace(
             'name: "out" data_type: TYPE_FP32 dims: [ 4 ]', 'name: "out" data_type: TYPE_FP32 dims: [ 5 ]'))},
         "ensemble-dims", ("ensemble output 'out' has dims [5] but receives dims [4]",)),
    Case("ensemble-batch-larger-than-step",
         {**python_model("double"), **chain("broken", STEP_OK, max_batch_size=16)},
         "ensemble-batch", ("max_batch_size 16 is larger than step 'double' allows (8)",), line=3),
    Case("ensemble-cycle",
         {**python_model("double"), **python_model("twice", GOOD_CONFIG.format(name="twice")),
          **chain("broken",
                  '{ model_name: "double" input_map { key: "x" value: "b" } output_map { key: "y" value: "a" } },'
                  '{ model_name: "twice" input_map { key: "x" value: "a" } output_map { key: "y" value: "b" } },'
                  '{ model_name: "twice" input_map { key: "x" value: "in" } output_map { key: "y" value: "out" } }')},
         "ensemble-cycle", ("wait on each other's outputs (a cycle)",)),
    Case("ensemble-without-version-folder", {**python_model("double"), **chain("broken", STEP_OK, version_folder=False)},
         "no-version", ("the ensemble has no version folder", "create an empty folder broken/1")),
    Case("ensemble-with-dynamic-batching",
         {**python_model("double"), **chain("broken", STEP_OK, io=ENSEMBLE_IO + "dynamic_batching { }\n")},
         # protobuf refuses it: ensemble_scheduling and dynamic_batching are one oneof
         "parse-error", ('another member of oneof "scheduling_choice"',), line=7),
    Case("ensemble-with-instances",
         {**python_model("double"), **chain("broken", STEP_OK, io=ENSEMBLE_IO + "instance_group [ { count: 2 } ]\n")},
         "ensemble-scheduler", ("an ensemble cannot have instance groups",), line=6),
    Case("ensemble-tensor-written-twice",
         {**python_model("double"), **python_model("twice", GOOD_CONFIG.format(name="twice")),
          **chain("broken", STEP_OK + ", " + STEP_OK.replace('"double"', '"twice"'))},
         "ensemble-wiring", ("tensor 'out' is written by step 1 and by step 0",)),
    # ----------------------------------------------------------------- native backends (judged by nbserve only)
    Case("onnx-dims-mismatch", onnx_case(dims="5"), "dims-mismatch",
         ("input 'x' dims", "differ from the ONNX graph's shape [-1, 4] at axis 1", "set dims to [4]"),
         triton=None, line=4, needs=("onnx",)),
    Case("onnx-graph-without-batch", onnx_case(batch=1), "batch-mismatch",
         ("max_batch_size is 8 but the ONNX graph fixes the first dimension at 1", "max_batch_size: 0"),
         triton=None, line=3, needs=("onnx",)),
    Case("onnx-batch-dim-in-dims", onnx_case(mbs=0, dims="4"), "dims-mismatch",
         ("give rank 1, the ONNX graph has rank 2", "set max_batch_size > 0 and dims: [4]"), triton=None, line=4,
         needs=("onnx",)),
    Case("onnx-dtype-mismatch", onnx_case(elem="DOUBLE"), "dtype-mismatch",
         ("data_type TYPE_FP32 but the ONNX graph has FP64", "set data_type: TYPE_FP64"), triton=None, line=4,
         needs=("onnx",)),
    Case("onnx-tensor-name", onnx_case(input="input"), "onnx-tensor-missing",
         ("input 'input'", "is not an input of the ONNX graph", "['x']"), triton=None, line=4, needs=("onnx",)),
    Case("pytorch-input-indices", torch_case(["INPUT__0", "INPUT__2"]), "torch-naming",
         ("input indices", "'INPUT__2': 2", "are not 0..1"), triton=None, line=4, needs=("torch",)),
    Case("pytorch-input-count", torch_case(["a", "b", "c"]), "torch-input-count",
         ("forward() takes 2 tensors (a, b), the config declares 3",), triton=None, needs=("torch",)),
    Case("pytorch-input-names", torch_case(["first", "second"]), "torch-naming",
         ("'first' is neither one of forward()'s argument names (a, b) nor <name>__<index>", "INPUT__0"),
         severity="warning", triton=None, line=4, needs=("torch",)),
    Case("pytorch-output-naming", torch_case(["a", "b"], output="probs"), "torch-naming",
         ("output 'probs' does not follow <name>__<index>", "OUTPUT__0"), severity="warning", triton=None, line=5,
         needs=("torch",)),
    Case("fil-model-type", fil_case(model_type="xgboost_jsn"), "fil-parameter",
         ('unknown model_type "xgboost_jsn"', "did you mean 'xgboost_json'"), triton=None, line=6,
         needs=("xgboost",)),
    Case("fil-output-class-flag", fil_case(output_class="yes"), "fil-parameter",
         ('output_class is "yes", not "true" or "false"',), triton=None, line=7, needs=("xgboost",)),
    Case("fil-tensor-names", fil_case(input="features"), "fil-tensor-name",
         ("FIL reads only input__0", 'name the input "input__0"'), triton=None, line=4, needs=("xgboost",)),
    Case("fil-feature-count", fil_case(features=5), "dims-mismatch",
         ("input__0 dims [5], but the forest reads 6 features", "set dims: [ 6 ]"), triton=None, line=4,
         needs=("xgboost", "treelite")),
    Case("fil-model-file-for-another-type", fil_case(model_type="lightgbm"), "model-file-missing",
         ('model_type "lightgbm" loads model.txt, which is missing (the folder holds xgboost.json)',
          'model_type "xgboost_json"'), triton=None, needs=("xgboost",)),
    Case("tensorrt-plan-missing",
         {"broken/config.pbtxt": ONNX_CONFIG.format(mbs=8, input="x", dtype="TYPE_FP32", dims="4").replace(
             "onnxruntime_onnx", "tensorrt_plan"), "broken/1/model.onnx": onnx_file()},
         "file-backend-mismatch", ("tensorrt_plan loads model.plan, but the version folder 1/ holds model.onnx",
                                   'platform: "onnxruntime_onnx"'), triton=None, needs=("onnx",)),
]


def renamed(case: Case, prefix: str) -> dict[str, str]:
    """The case's files with every model folder and quoted model name prefixed (to share one repository)."""
    import re

    names = {relative.split("/")[0] for relative in case.files} | {"other"}
    out = {}
    for relative, text in case.files.items():
        folder, _, rest = relative.partition("/")
        if relative.endswith("config.pbtxt"):
            text = re.sub(r'"(' + "|".join(map(re.escape, sorted(names))) + r')"', lambda m: f'"{prefix}{m.group(1)}"', text)
        out[f"{prefix}{folder}/{rest}"] = text
    return out

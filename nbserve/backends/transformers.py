"""Hugging Face transformers: a ``(tokenizer, model)`` pair or a text-classification /
feature-extraction ``Pipeline``, served as text in (BYTES ``text``) and numbers out.

Sequence-classification and regression heads give their ``logits``; base models give ``embeddings``
(the attention-masked mean of the last hidden state). In the kernel the live tokenizer and model run
directly: tokenize the batch (padded to its longest text), run the model under
``torch.inference_mode()``, return NumPy. Registering puts the model in eval mode.

On disk the pair becomes a Triton ensemble of three models, which :func:`write` creates side by side
in the repository being written:

- ``<name>_tokenizer``: a Python-backend model; its version folder holds the tokenizer's
  ``save_pretrained`` files and a ``model.py`` that loads them with ``AutoTokenizer.from_pretrained``
  and turns BYTES text into INT64 ``input_ids`` and ``attention_mask``;
- ``<name>_model``: the model with its head as ``model.onnx`` (dynamic batch and sequence axes) for
  the ``onnxruntime_onnx`` platform, checked against the live model after export;
- ``<name>``: the ensemble (``platform: "ensemble"``) chaining the two, with the registered input
  and output. Triton's scheduler settings (dynamic batching, instance groups) go to the two steps,
  since ensembles have none of their own.

Reading the repository back gives the two step models (through the Python and ONNX backends) and
the ensemble, which runs them in order and returns what the kernel run returns.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, build_config, input_specs, output_specs, parse, render, validate, validate_name
from ..errors import ConfigError, ExportError, SignatureError, require
from ..tensors import TensorSpec, to_numpy
from .base import Adapted, check_declared, module_names, normalize_example

name = "transformers"

TEXT = "text"
TOKEN_TENSORS = ("input_ids", "attention_mask")
TOKENIZER_SUFFIX = "_tokenizer"
MODEL_SUFFIX = "_model"
ONNX_FILE = "model.onnx"
SIGNATURE_FILE = "nbserve_tokenizer.json"
ONNX_OPSET = 17  # LayerNormalization is a single op from 17; every ONNX Runtime Triton ships reads it
# Pipeline task -> what the model returns.
TASK_OUTPUTS = {"text-classification": "logits", "sentiment-analysis": "logits", "feature-extraction": "embeddings"}

_TOKENIZER = "transformers.tokenization_utils_base.PreTrainedTokenizerBase"
_MODEL = "transformers.modeling_utils.PreTrainedModel"
_PIPELINE = "transformers.pipelines.base.Pipeline"


def _parts(obj: Any) -> tuple[Any, Any, str | None] | None:
    """(tokenizer, model, pipeline task) from a pipeline or a pair in either order; None otherwise."""
    if _PIPELINE in module_names(obj):
        return getattr(obj, "tokenizer", None), getattr(obj, "model", None), getattr(obj, "task", None)
    if isinstance(obj, tuple) and len(obj) == 2:
        first, second = (module_names(item) for item in obj)
        if _TOKENIZER in first and _MODEL in second:
            return obj[0], obj[1], None
        if _MODEL in first and _TOKENIZER in second:
            return obj[1], obj[0], None
    return None


def matches(obj: Any) -> bool:
    return not isinstance(obj, type) and _parts(obj) is not None


def encode_texts(tokenizer: Any, texts: Any, max_length: int) -> dict[str, np.ndarray]:
    """BYTES/str texts (any shape) -> INT64 ``input_ids`` and ``attention_mask`` [n, longest].

    Shared verbatim by the kernel runner and the tokenizer's ``model.py`` so both tokenize alike.
    """
    flat = np.asarray(texts, dtype=object).reshape(-1)
    items = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in flat]
    encoded = tokenizer(
        items, padding=True, truncation=True, max_length=max_length, return_attention_mask=True, return_tensors="np"
    )
    return {key: np.ascontiguousarray(encoded[key], dtype=np.int64) for key in ("input_ids", "attention_mask")}


def _max_length(tokenizer: Any, model: Any) -> int:
    limits = [getattr(tokenizer, "model_max_length", None), getattr(model.config, "max_position_embeddings", None)]
    # Tokenizers built without a checkpoint report a huge sentinel (int(1e30)) as their limit.
    limits = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(limits) if limits else 512


def _text_module(model: Any, kind: str) -> Any:
    """The model plus its output head as one module of (input_ids, attention_mask): run and exported."""
    torch = require("torch", "transformers", purpose="serving a transformers model")

    class TextModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            if kind == "logits":
                return out.logits.float()
            hidden = out.last_hidden_state.float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    # A new module defaults to training mode, and exporting restores the wrapper's mode on the model.
    return TextModel().train(model.training)


class TextRunner:
    """Tokenizes a batch of texts and runs the model module on it; returns NumPy FP32."""

    def __init__(self, tokenizer: Any, module: Any, *, input_name: str, output_name: str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.module = module
        self.input_name = input_name
        self.output_name = output_name
        self.max_length = max_length
        # Fast tokenizers keep padding/truncation state in Rust and refuse concurrent calls.
        self._lock = threading.Lock()

    @property
    def device(self) -> Any:
        return next(self.module.parameters()).device

    def tokens(self, texts: Any) -> dict[str, np.ndarray]:
        with self._lock:
            return encode_texts(self.tokenizer, texts, self.max_length)

    def forward(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        device = self.device
        args = [torch.from_numpy(tokens[key]).to(device) for key in TOKEN_TENSORS]
        with torch.inference_mode():
            return self.module(*args).cpu().numpy()

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {self.output_name: self.forward(self.tokens(to_numpy(inputs[self.input_name])))}


# ----------------------------------------------------------------------------- adapt
def adapt(
    obj: Any,
    *,
    name: str,
    inputs: list[TensorSpec] | None,
    outputs: list[TensorSpec] | None,
    example: Any,
    max_batch_size: int | None,
    options: dict[str, Any],
) -> Adapted:
    require("torch", "transformers", purpose="serving a transformers model")
    input_names = options.pop("input_names", None) or [TEXT]
    output_names = options.pop("output_names", None)
    max_length = options.pop("max_length", None)
    parts = _parts(obj)
    if parts is None:
        raise SignatureError(
            f"the transformers backend cannot serve a {type(obj).__name__}",
            model=name,
            expected="a (tokenizer, model) tuple or a text-classification / feature-extraction pipeline",
        )
    tokenizer, model, task = parts
    if tokenizer is None or model is None:
        raise SignatureError(
            "the pipeline has no tokenizer or no model",
            model=name,
            hint="pass the (tokenizer, model) pair instead",
        )
    if task is not None and task not in TASK_OUTPUTS:
        raise SignatureError(
            f"pipeline task {task!r} is not served",
            model=name,
            expected=", ".join(TASK_OUTPUTS),
            hint="register a text-classification or feature-extraction pipeline, or wrap your pipeline "
            "in a Python function over NumPy arrays",
        )
    if len(input_names) != 1 or (output_names and len(output_names) != 1):
        raise SignatureError(
            "a text model has one input (the texts) and one output",
            model=name,
            got=f"inputs {input_names}, outputs {output_names}",
            hint=f'pass one name each, e.g. inputs=["{TEXT}"]',
        )
    model.eval()  # serving means inference: no dropout
    max_length = int(max_length or _max_length(tokenizer, model))
    kind = TASK_OUTPUTS.get(task) if task else _output_kind(tokenizer, model, max_length, name)
    runner = TextRunner(
        tokenizer,
        _text_module(model, kind),
        input_name=input_names[0],
        output_name=(output_names or [kind])[0],
        max_length=max_length,
    )
    if max_batch_size is None:
        max_batch_size = 64
    batch_dim = max_batch_size > 0
    probe = {runner.input_name: np.array([[b"hello world"]] if batch_dim else [b"hello world"], dtype=object)}
    if example is not None:
        probe = normalize_example(example, [runner.input_name])
    try:
        result = runner(probe)[runner.output_name]
    except Exception as exc:  # tokenizer or model code: anything can come out
        raise SignatureError(
            f"running the model on {'the example' if example is not None else 'a sample text'} failed: "
            f"{type(exc).__name__}: {exc}",
            model=name,
            tensor=runner.input_name,
            hint="pass texts as np.array([[b'...'], ...], dtype=object); a tokenizer without a pad token "
            "needs tokenizer.pad_token = tokenizer.eos_token",
        ) from exc
    width = int(result.shape[-1])
    inferred_in = [TensorSpec(runner.input_name, (1,) if batch_dim else (-1,), "BYTES")]
    inferred_out = [TensorSpec(runner.output_name, (width,) if batch_dim else (-1, width), "FP32")]
    inputs = check_declared(inputs, inferred_in, kind="input", model=name)
    outputs = check_declared(outputs, inferred_out, kind="output", model=name)
    return Adapted(
        runner=runner,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        framework="transformers",
        device="gpu" if runner.device.type == "cuda" else "cpu",
    )


def _output_kind(tokenizer: Any, model: Any, max_length: int, name: str) -> str:
    """"logits" for models with a head, "embeddings" for base models (from one sample run)."""
    import torch

    tokens = encode_texts(tokenizer, np.array([b"hello world"], dtype=object), max_length)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(**{key: torch.from_numpy(tokens[key]).to(device) for key in TOKEN_TENSORS})
    if getattr(out, "logits", None) is not None and out.logits.ndim == 2:
        return "logits"
    if getattr(out, "last_hidden_state", None) is not None:
        return "embeddings"
    raise SignatureError(
        f"the model returns neither per-text logits nor hidden states ({type(out).__name__})",
        model=name,
        expected="a sequence-classification/regression model or a base encoder (AutoModel)",
        hint="wrap the model in a Python function that returns NumPy arrays and register that",
    )


# ----------------------------------------------------------------------------- files
TOKENIZER_MODEL_PY = '''\
"""Triton Python-backend tokenizer written by nbserve: BYTES texts in, INT64 token ids out.

The tokenizer's files (save_pretrained) lie next to this file; {signature_file} names the tensors.
"""
from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


{encode_source}

class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "{signature_file}")) as f:
            self.signature = json.load(f)
        self.tokenizer = AutoTokenizer.from_pretrained(here)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = pb_utils.get_input_tensor_by_name(request, self.signature["input"]).as_numpy()
                tokens = encode_texts(self.tokenizer, texts, self.signature["max_length"])
                tensors = [pb_utils.Tensor(name, tokens[name]) for name in self.signature["outputs"]]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # one bad request fails alone, never the server
                error = pb_utils.TritonError(f"{{type(exc).__name__}}: {{exc}}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
'''


def tokenizer_model_py() -> str:
    return TOKENIZER_MODEL_PY.format(signature_file=SIGNATURE_FILE, encode_source=inspect.getsource(encode_texts))


def step_configs(config: ModelConfig) -> tuple[ModelConfig, ModelConfig, ModelConfig]:
    """The tokenizer, model and ensemble configs written for a registered transformers config."""
    text, result = input_specs(config)[0], output_specs(config)[0]
    lead = () if config.max_batch_size > 0 else (-1,)
    tokens = [TensorSpec(key, (*lead, -1), "INT64") for key in TOKEN_TENSORS]
    # The steps keep the registered scheduling (batching, instances, versions); not its parameters.
    base = ModelConfig()
    base.CopyFrom(config)
    for field in ("input", "output", "parameters", "platform", "backend"):
        base.ClearField(field)
    common = {"max_batch_size": config.max_batch_size, "config": base}
    tokenizer = build_config(name=f"{config.name}{TOKENIZER_SUFFIX}", inputs=[text], outputs=tokens, backend="python",
                             **common)
    model = build_config(name=f"{config.name}{MODEL_SUFFIX}", inputs=tokens, outputs=[result],
                         platform="onnxruntime_onnx", **common)
    ensemble = ModelConfig()
    ensemble.CopyFrom(config)
    ensemble.platform, ensemble.backend = "ensemble", ""
    for field in ("dynamic_batching", "sequence_batching", "instance_group"):
        ensemble.ClearField(field)
    first = ensemble.ensemble_scheduling.step.add(model_name=tokenizer.name, model_version=-1)
    first.input_map[text.name] = text.name
    second = ensemble.ensemble_scheduling.step.add(model_name=model.name, model_version=-1)
    for key in TOKEN_TENSORS:
        first.output_map[key] = key
        second.input_map[key] = key
    second.output_map[result.name] = result.name
    return tokenizer, model, validate(ensemble)


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    runner = options.get("runner")
    if not isinstance(runner, TextRunner):
        raise ExportError(
            "only a registered (tokenizer, model) pair or pipeline can be written as a transformers ensemble",
            model=config.name,
            hint="register the live tokenizer and model",
        )
    root = Path(options.get("repository") or version_dir.parent.parent)
    version = str(options.get("version") or version_dir.name)
    tokenizer_config, model_config, ensemble = step_configs(config)
    _write_step(root, tokenizer_config, version, lambda folder: _write_tokenizer(runner, config, folder))
    _write_step(root, model_config, version, lambda folder: export_onnx(runner, config, folder / ONNX_FILE))
    version_dir.mkdir(parents=True, exist_ok=True)  # Triton wants the ensemble's (empty) version folder
    return ensemble


def _write_step(root: Path, config: ModelConfig, version: str, fill: Any) -> None:
    model_dir = root / validate_name(config.name)
    folder = model_dir / version
    if folder.exists():
        raise ExportError(
            "the ensemble's step model collides with another model in the repository",
            model=config.name,
            got=str(folder),
            hint=f"rename the model registered as '{config.name}'",
        )
    folder.mkdir(parents=True)
    fill(folder)
    text = render(validate(config))
    parse(text, path=str(model_dir / "config.pbtxt"))
    (model_dir / "config.pbtxt").write_text(text)


def _write_tokenizer(runner: TextRunner, config: ModelConfig, folder: Path) -> None:
    runner.tokenizer.save_pretrained(str(folder))
    signature = {"input": config.input[0].name, "outputs": list(TOKEN_TENSORS), "max_length": runner.max_length}
    (folder / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2))
    (folder / "model.py").write_text(tokenizer_model_py())


@contextlib.contextmanager
def _quiet_export():
    # The tracer warns about Python branches in transformers' code (and about its own deprecation);
    # the exported graph is checked against the live model instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(runner: TextRunner, config: ModelConfig, path: Path) -> None:
    """Export the runner's module to ONNX with dynamic batch and sequence axes, then verify it."""
    import torch

    samples = np.array([b"hello world", b"a longer text, to pad the first one"], dtype=object)
    device = runner.device
    args = tuple(torch.from_numpy(array).to(device) for array in runner.tokens(samples).values())
    output = config.output[0].name
    axes = {key: {0: "batch", 1: "sequence"} for key in TOKEN_TENSORS}
    axes[output] = {0: "batch"}
    kwargs: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    try:
        with _quiet_export(), torch.no_grad():
            torch.onnx.export(
                runner.module,
                args,
                str(path),
                input_names=list(TOKEN_TENSORS),
                output_names=[output],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                **kwargs,  # the TorchScript-based exporter needs no onnxscript and keeps dynamic_axes
            )
    except Exception as exc:
        raise ExportError(
            f"exporting the model to ONNX failed: {type(exc).__name__}: {exc}",
            model=config.name,
            hint="check that the model runs under torch.jit.trace, or serve it in the kernel only",
        ) from exc
    _check_onnx(runner, path, config.name)


def _check_onnx(runner: TextRunner, path: Path, model: str) -> None:
    """The exported graph must agree with the live model on a batch of another size and length."""
    ort = require("onnxruntime", "transformers", purpose="checking the exported ONNX model")
    texts = np.array([b"hello", b"the cat sat on the mat, twice over", b"world"], dtype=object)
    tokens = runner.tokens(texts)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, tokens)
    expected = runner.forward(tokens)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
        difference = f", max difference {float(np.abs(got - expected).max())}" if got.shape == expected.shape else ""
        raise ExportError(
            "the exported ONNX model disagrees with the live model",
            model=model,
            expected=f"shape {list(expected.shape)}",
            got=f"shape {list(got.shape)}{difference}",
            hint="the model has shape-dependent Python code the tracer froze; serve it in the kernel only",
        )


def reads(config: ModelConfig) -> bool:
    # Written ensembles come back as their steps (python, onnxruntime_onnx) plus the ensemble itself.
    return False


def read(config: ModelConfig, version_dir: Path) -> Adapted:
    raise ConfigError(
        "transformers models are read back as their ensemble's steps",
        model=config.name,
        hint="read the whole repository with nbserve.read_repository",
    )

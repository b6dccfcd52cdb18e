"""What goes next to the models: README.md, a KServe manifest and the ``docker run`` line.

Everything is generated from the configs written to the repository (never from the live objects),
so what the README says about tensors is what Triton will load:

* :func:`docker_run_line`: the Triton container on this repository (GPUs and a larger shared memory
  only when the models need them; the Python-backend models' requirements installed first);
* :func:`kserve_manifest`: a KServe ``InferenceService`` for Triton (``kserve.yaml``);
* :func:`client_example`: a runnable ``tritonclient`` call for one model;
* :func:`readme`: the repository's README.md, which includes all of the above.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config import ModelConfig
from ..tensors import numpy_dtype, triton_dtype

__all__ = [
    "TRITON_IMAGE",
    "TRITON_VERSION",
    "TRITON_PYTHON",
    "docker_run_line",
    "kserve_manifest",
    "kserve_name",
    "client_example",
    "example_shape",
    "readme",
    "uses_gpu",
]

# The Triton release nbserve tests exports with (the tritonserver in nvidia-pytriton 0.7 is 2.51).
TRITON_VERSION = "24.10"
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_VERSION}-py3"
TRITON_PYTHON = "3.10"  # the Python its Python-backend stub is built for (Ubuntu 22.04)
CONTAINER_REPOSITORY = "/models"


def uses_gpu(configs: Sequence[ModelConfig]) -> bool:
    """Whether any model asks for GPU instances."""
    return any(g.kind == g.KIND_GPU for c in configs for g in c.instance_group)


def _python_models(configs: Sequence[ModelConfig]) -> list[str]:
    return [c.name for c in configs if c.backend == "python"]


def docker_run_line(
    repository: str | Path,
    configs: Sequence[ModelConfig],
    *,
    requirements: Sequence[str] = (),
    image: str = TRITON_IMAGE,
) -> str:
    """The ``docker run`` command that serves ``repository`` with Triton on ports 8000-8002.

    Args:
        repository: the repository's path on the machine that runs docker.
        configs: the configs in the repository (for GPUs and the Python backend).
        requirements: ``requirements.txt`` files, relative to the repository, to pip-install first.
        image: the Triton container image.

    >>> docker_run_line("/srv/models", [])
    'docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v /srv/models:/models nvcr.io/nvidia/tritonserver:24.10-py3 tritonserver --model-repository=/models'
    """
    parts = ["docker", "run", "--rm"]
    if uses_gpu(configs):
        parts.append("--gpus=all")
    if _python_models(configs):
        parts.append("--shm-size=1g")  # the Python backend passes tensors through shared memory
    parts += ["-p", "8000:8000", "-p", "8001:8001", "-p", "8002:8002",
              "-v", f"{Path(repository)}:{CONTAINER_REPOSITORY}", image]
    serve = f"tritonserver --model-repository={CONTAINER_REPOSITORY}"
    if requirements:
        install = " ".join(f"-r {CONTAINER_REPOSITORY}/{r}" for r in requirements)
        parts += ["bash", "-c", f"pip install --quiet {install} && {serve}"]
        return " ".join(shlex.quote(p) for p in parts)
    return " ".join(shlex.quote(p) for p in parts) + " " + serve


def kserve_name(name: str) -> str:
    """A DNS-1035 label (what KServe accepts as an InferenceService name) made from ``name``.

    >>> kserve_name("My_Model Repository")
    'my-model-repository'
    """
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"triton-{label}".strip("-")
    return label[:63].rstrip("-")


def _quote(value: str) -> str:
    # JSON strings are YAML strings: no hand-rolled escaping.
    import json

    return json.dumps(value)


def kserve_manifest(
    name: str,
    configs: Sequence[ModelConfig],
    *,
    storage_uri: str | None = None,
    runtime_version: str = f"{TRITON_VERSION}-py3",
) -> str:
    """A KServe ``InferenceService`` (v1beta1) that serves the repository with Triton over the v2 protocol.

    Args:
        name: the repository's name (made into a DNS-1035 label).
        configs: the configs in the repository (GPU models get ``nvidia.com/gpu`` limits).
        storage_uri: where the repository is uploaded (``gs://``, ``s3://``, ``pvc://``...);
            without it, ``pvc://nbserve-models/<name>``.
        runtime_version: the Triton image tag of KServe's Triton runtime.
    """
    label = kserve_name(name)
    uri = storage_uri or f"pvc://nbserve-models/{Path(name).name}"
    gpu = uses_gpu(configs)
    lines = [
        "# KServe InferenceService for this Triton model repository, written by nbserve.export.",
        f"# Upload the repository folder to {uri} (or pass storage_uri= to nbserve.export),",
        "# then: kubectl apply -f kserve.yaml",
    ]
    if _python_models(configs):
        lines += [
            "# Python-backend models need their requirements.txt packages in the container: pack them",
            "# with conda-pack and set EXECUTION_ENV_PATH in their config.pbtxt (see README.md).",
        ]
    lines += [
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {_quote(label)}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        "        name: triton",
        "      protocolVersion: v2",
        f"      runtimeVersion: {_quote(runtime_version)}",
        f"      storageUri: {_quote(uri)}",
        "      resources:",
        "        requests:",
        '          cpu: "1"',
        "          memory: 2Gi",
        "        limits:",
        '          cpu: "2"',
        "          memory: 4Gi",
    ]
    if gpu:
        lines.append('          nvidia.com/gpu: "1"')
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- client example
def example_shape(config: ModelConfig, dims: Sequence[int]) -> list[int]:
    """A one-item request shape: batch 1 when the model batches, variable dims as 1."""
    lead = [1] if config.max_batch_size > 0 else []
    return lead + [1 if d < 0 else int(d) for d in dims]


def client_example(config: ModelConfig, url: str = "localhost:8000") -> str:
    """A runnable tritonclient (HTTP) script that sends one request to the model and prints the outputs.

    >>> from nbserve.config import build_config
    >>> cfg = build_config(name="m", inputs=[("x", [4], "FP32")], outputs=[("y", [1], "FP32")], max_batch_size=8)
    >>> print(client_example(cfg))  # doctest: +ELLIPSIS
    import numpy as np
    import tritonclient.http as httpclient
    <BLANKLINE>
    client = httpclient.InferenceServerClient(url="localhost:8000")
    inputs = [httpclient.InferInput("x", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(np.zeros([1, 4], dtype="float32"))
    result = client.infer("m", inputs)
    print("y", result.as_numpy("y"))
    """
    lines = [
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "",
        f"client = httpclient.InferenceServerClient(url={_quote(url)})",
    ]
    created, filled = [], []
    for index, tensor in enumerate(config.input):
        datatype = triton_dtype(tensor.data_type)
        shape = example_shape(config, tensor.dims)
        created.append(f"httpclient.InferInput({_quote(tensor.name)}, {shape}, {_quote(datatype)})")
        if datatype == "BYTES":
            value = f'np.full({shape}, b"hello world", dtype=object)'
        elif datatype == "BF16":
            value = f'np.zeros({shape}, dtype="float32")'
        else:
            value = f"np.zeros({shape}, dtype={_quote(numpy_dtype(datatype).name)})"
        filled.append(f"inputs[{index}].set_data_from_numpy({value})")
    if len(created) == 1:
        lines.append(f"inputs = [{created[0]}]")
    else:
        lines.append("inputs = [")
        lines += [f"    {c}," for c in created]
        lines.append("]")
    lines += filled
    lines.append(f"result = client.infer({_quote(config.name)}, inputs)")
    lines += [f"print({_quote(t.name)}, result.as_numpy({_quote(t.name)}))" for t in config.output]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- README
def _dims(config: ModelConfig, dims: Sequence[int]) -> str:
    shown = ([-1] if config.max_batch_size > 0 else []) + [int(d) for d in dims]
    return "[" + ", ".join(str(d) for d in shown) + "]"


def _kind(config: ModelConfig) -> str:
    if config.platform == "ensemble":
        return "ensemble"
    if config.backend == "python":
        return "Python backend"
    return config.platform or f'backend "{config.backend}"'


def _batching(config: ModelConfig) -> str:
    if config.platform == "ensemble":
        return f"max_batch_size {config.max_batch_size} (steps batch)" if config.max_batch_size else "none"
    if config.max_batch_size <= 0:
        return "none"
    text = f"max_batch_size {config.max_batch_size}"
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        text += f", dynamic (max_queue_delay_microseconds {db.max_queue_delay_microseconds}"
        if db.preferred_batch_size:
            text += f", preferred_batch_size {list(db.preferred_batch_size)}"
        text += ")"
    return text


def _instances(config: ModelConfig) -> str:
    if config.platform == "ensemble" or not config.instance_group:
        return "-"
    parts = []
    for group in config.instance_group:
        kind = group.Kind.Name(group.kind).replace("KIND_", "")
        parts.append(f"{group.count or 1} x {kind}")
    return ", ".join(parts)


def _tensor_rows(config: ModelConfig) -> list[str]:
    rows = ["| tensor | direction | datatype | shape |", "|---|---|---|---|"]
    for direction, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            rows.append(f"| `{t.name}` | {direction} | {triton_dtype(t.data_type)} | {_dims(config, t.dims)} |")
    return rows


def readme(
    name: str,
    configs: Sequence[ModelConfig],
    *,
    docker_line: str,
    requirements: Mapping[str, str] | None = None,
    warnings: Sequence[str] = (),
    versions: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """README.md for the repository: the models, their tensors, and how to serve and call them.

    Args:
        name: the repository folder's name.
        configs: the configs written to it, in order.
        docker_line: the ``docker run`` command (see :func:`docker_run_line`).
        requirements: model name -> path of its requirements.txt, for Python-backend models.
        warnings: notes the export made (shown under "Before you deploy").
        versions: model name -> the version folders written.
    """
    requirements = dict(requirements or {})
    versions = dict(versions or {})
    steps = {s.model_name for c in configs if c.platform == "ensemble" for s in c.ensemble_scheduling.step}
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    out = [
        f"# Triton model repository `{name}`",
        "",
        "Written by nbserve `export()` from the models served in a notebook: the",
        "configs below are the ones that served traffic there (batching, instances, tensors).",
        "",
        "## Models",
        "",
        "| model | kind | versions | batching | instances |",
        "|---|---|---|---|---|",
    ]
    for c in configs:
        shown = ", ".join(str(v) for v in versions.get(c.name, ())) or "-"
        role = " (ensemble step)" if c.name in steps else ""
        out.append(f"| `{c.name}`{role} | {_kind(c)} | {shown} | {_batching(c)} | {_instances(c)} |")
    for c in configs:
        out += ["", f"### `{c.name}`", ""]
        if c.platform == "ensemble":
            chain = " -> ".join(f"`{s.model_name}`" for s in c.ensemble_scheduling.step)
            out += [f"Ensemble of {chain}.", ""]
        out += _tensor_rows(c)
        if c.name in requirements:
            out += ["", f"Needs the Python packages in `{requirements[c.name]}` (see *Custom Python environment*)."]
    out += [
        "",
        "## Serve it",
        "",
        "With Docker (Triton's container; ports 8000 HTTP, 8001 gRPC, 8002 metrics):",
        "",
        "```bash",
        docker_line,
        "```",
        "",
        "With a local `tritonserver`: `tritonserver --model-repository=\"$(pwd)\"` in this folder.",
        "",
        "On Kubernetes with KServe: upload this folder to the `storageUri` in `kserve.yaml`, then",
        "`kubectl apply -f kserve.yaml`.",
        "",
        "Check it before deploying: `nbserve validate .` (and `nbserve serve .` serves it without Triton).",
        "",
        "## Call it",
        "",
        "With `pip install \"tritonclient[http]\"`, against the server started above:",
    ]
    # Pipelines first; their steps are models of their own and can be called directly too.
    for c in sorted(configs, key=lambda c: c.name in steps):
        role = " (an ensemble step, callable on its own)" if c.name in steps else ""
        out += ["", f"`{c.name}`{role}:", "", "```python", client_example(c), "```"]
    if requirements:
        out += [
            "",
            "## Custom Python environment",
            "",
            "Triton's container runs Python-backend models with its own Python "
            f"({TRITON_PYTHON} in {TRITON_IMAGE}) and packages. The `docker run` line above pip-installs each",
            "model's `requirements.txt` first. To ship the packages with the model instead (KServe, offline",
            "clusters), pack an environment with conda-pack and point the model at it with Triton's",
            "`EXECUTION_ENV_PATH`:",
            "",
            "```bash",
            f"conda create -y -p ./env python={python} && conda activate ./env",
            "pip install -r MODEL/requirements.txt conda-pack && conda-pack -p ./env -o MODEL/python_env.tar.gz",
            "```",
            "",
            "and add to `MODEL/config.pbtxt`:",
            "",
            "```",
            'parameters: { key: "EXECUTION_ENV_PATH", value: { string_value: "$$TRITON_MODEL_DIRECTORY/python_env.tar.gz" } }',
            "```",
            "",
            f"The models were written with Python {python}. Callables are pickled (cloudpickle), which needs",
            "the same Python minor version where they are loaded: if the container's Python differs, build",
            "the Python-backend stub for this version (python_backend README, \"Building Custom Python",
            "Backend Stub\") and use it with the packed environment.",
        ]
    if warnings:
        out += ["", "## Before you deploy", ""]
        out += [f"- {w}" for w in warnings]
    return "\n".join(out) + "\n"

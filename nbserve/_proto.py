"""Triton's generated protobuf modules, loaded without importing all of ``tritonclient.grpc``.

``import tritonclient.grpc`` pulls in grpc, the client and ml_dtypes (about 0.3 s); the config
contract needs only ``model_config_pb2``, which depends on protobuf alone. We load that file under
its real module name, so a later ``import tritonclient.grpc`` reuses it (one descriptor pool entry).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

_NAME = "tritonclient.grpc.model_config_pb2"


def model_config_pb2() -> ModuleType:
    module = sys.modules.get(_NAME)
    if module is not None:
        return module
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        from .errors import MissingDependency

        raise MissingDependency("tritonclient", "all", purpose="the Triton model config")
    path = f"{list(spec.submodule_search_locations)[0]}/grpc/model_config_pb2.py"
    file_spec = importlib.util.spec_from_file_location(_NAME, path)
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[_NAME] = module
    file_spec.loader.exec_module(module)
    return module

"""The server a benchmark measures: an in-kernel nbserve server, or any KServe v2 server by URL.

:func:`resolve` turns what the user passed (a ``Server``, a ``SubprocessServer``, a
``TritonServer``, an ``InferenceCore``, or a URL such as ``"http://127.0.0.1:8000"``,
``"grpc://host:8001"`` or ``"host:8000"``) and a protocol into a :class:`Target`, which knows how
to read the model's signature and config, how to read the server's statistics, and which transport
spec the load generator needs. Statistics come from the cheapest exact source: the core itself when
it is in this process, else the statistics extension over the benchmark's protocol.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ..errors import InvalidInput, ModelNotFound, NbserveError, ServerStateError
from .measure import ServerSnapshot

__all__ = ["Target", "resolve", "PROTOCOLS"]

PROTOCOLS = ("inprocess", "http", "grpc")


class Target:
    """One server, one protocol: metadata, config and statistics readers plus the load's address."""

    def __init__(self, *, protocol: str, address: str = "", core: Any = None, token: str | None = None,
                 label: str = "", server: Any = None) -> None:
        self.protocol = protocol
        self.address = address
        self.core = core
        self.server = server  # the in-kernel Server object, when there is one
        self.token = token
        self.label = label or (f"{protocol}://{address}" if address else "in-process")
        self._channel: Any = None
        self._stub: Any = None
        self._http: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connections used to read the server (idempotent)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None
        if self._http is not None:
            self._http.close()
            self._http = None

    # --------------------------------------------------------------------- reading the server
    def metadata(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's KServe v2 metadata (name, versions, inputs, outputs)."""
        if self.core is not None:
            return self.core.model_metadata(model, version or None)
        if self.protocol == "grpc":
            return self._grpc_json("ModelMetadata", model, version)
        return self._http_json(f"/v2/models/{quote(model, safe='')}" + _version_path(version), model)

    def max_batch_size(self, model: str, version: str = "") -> int | None:
        """The config's max_batch_size, or None when the server does not give configs."""
        try:
            if self.core is not None:
                return int(self.core.model_config(model, version or None).max_batch_size)
            if self.protocol == "grpc":
                config = self._grpc_json("ModelConfig", model, version).get("config") or {}
            else:
                config = self._http_json(f"/v2/models/{quote(model, safe='')}{_version_path(version)}/config", model)
        except (ModelNotFound, ServerStateError):
            raise
        except NbserveError:
            return None
        return int(config.get("max_batch_size") or 0)

    def statistics(self, model: str) -> ServerSnapshot:
        """The model's cumulative statistics now (all versions summed)."""
        if self.core is not None:
            try:
                data = self.core.model_statistics(model)
            except NbserveError:
                if self.server is not None and not getattr(self.server, "is_running", True):
                    raise ServerStateError("the server stopped during the benchmark",
                                           hint="start it again with nbserve.serve() and rerun") from None
                raise
        elif self.protocol == "grpc":
            data = self._grpc_json("ModelStatistics", model, "")
        else:
            data = self._http_json(f"/v2/models/{quote(model, safe='')}/stats", model)
        return ServerSnapshot.from_json(data, model)

    # --------------------------------------------------------------------- HTTP
    def _http_json(self, path: str, model: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        for attempt in range(2):  # a kept-alive connection the server closed meanwhile is opened again
            if self._http is None:
                host, _, port = self.address.rpartition(":")
                self._http = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
            try:
                self._http.request("GET", path, headers=headers)
                response = self._http.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self._http.close()
                self._http = None
                if attempt == 1:
                    raise ServerStateError(f"cannot reach the server at {self.address}: {exc}",
                                           hint="check the URL and that the server is running") from None
        data = _json_or_text(body)
        if response.status == 404:
            raise ModelNotFound(f"the server does not know this model: {_message(data)}", model=model,
                                hint="check the model name with the server's repository index")
        if response.status != 200:
            raise ServerStateError(f"GET {path} answered {response.status}: {_message(data)}", model=model)
        return data

    # --------------------------------------------------------------------- gRPC
    def _grpc_json(self, method: str, model: str, version: str) -> dict[str, Any]:
        import grpc
        from google.protobuf import json_format
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        request = getattr(service_pb2, f"{method}Request")(name=model, version=str(version or ""))
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        if self._stub is None:  # one channel for the run: statistics are read at every tick
            self._channel = grpc.insecure_channel(self.address)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            response = getattr(self._stub, method)(request, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise ModelNotFound(f"the server does not know this model: {exc.details()}", model=model) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ServerStateError(f"cannot reach the server at {self.address}: {exc.details()}",
                                       hint="check the address and that the server is running") from None
            raise ServerStateError(f"{method} failed: {code.name}: {exc.details()}", model=model) from None
        data = json_format.MessageToDict(response, preserving_proto_field_name=True)
        if method == "ModelMetadata":  # the JSON form of int64 dims is a string
            for key in ("inputs", "outputs"):
                for tensor in data.get(key, []):
                    tensor["shape"] = [int(d) for d in tensor.get("shape", [])]
        return data


def _version_path(version: str) -> str:
    return f"/versions/{quote(str(version), safe='')}" if version else ""


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _message(data: Any) -> str:
    return str(data.get("error", data)) if isinstance(data, Mapping) else str(data)[:300]


def _split_url(url: str) -> tuple[str | None, str]:
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return scheme.lower(), rest.rstrip("/")
    return None, url.rstrip("/")


def resolve(server_or_url: Any, protocol: str | None = None, *, token: str | None = None) -> Target:
    """The :class:`Target` for a server object or URL and a protocol.

    Args:
        server_or_url: an nbserve ``Server`` (in this kernel), anything with ``http_address`` /
            ``grpc_address`` (``SubprocessServer``, ``TritonServer``), an ``InferenceCore``, or a URL.
        protocol: ``"inprocess"``, ``"http"`` or ``"grpc"``; default: in-process for an in-kernel
            server, the URL's scheme, else HTTP.
        token: a bearer token (default: the server object's own).

    Raises:
        InvalidInput: an unknown protocol, or one the target cannot speak.
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidInput(f"unknown protocol {protocol!r}", expected=" or ".join(repr(p) for p in PROTOCOLS),
                           hint='protocol="http" (or "grpc", or "inprocess" for an in-kernel server)')
    if isinstance(server_or_url, str):
        scheme, address = _split_url(server_or_url)
        if scheme not in (None, "http", "grpc"):
            raise InvalidInput(f"unsupported URL scheme {scheme!r}", got=server_or_url,
                               hint='use "http://host:port" or "grpc://host:port"')
        chosen = protocol or scheme or "http"
        if chosen == "inprocess" or (scheme and protocol and scheme != protocol):
            raise InvalidInput(f"a {scheme or 'plain'} URL cannot be benchmarked with protocol={chosen!r}",
                               got=server_or_url,
                               hint="pass the server object for the in-process API, or match the URL's scheme")
        if ":" not in address:
            raise InvalidInput("the URL has no port", got=server_or_url, hint='e.g. "http://127.0.0.1:8000"')
        return Target(protocol=chosen, address=address, token=token)

    from ..serving.core import InferenceCore

    if isinstance(server_or_url, InferenceCore):
        if protocol not in (None, "inprocess"):
            raise InvalidInput("an InferenceCore has no network address", hint="pass the Server, or a URL")
        return Target(protocol="inprocess", core=server_or_url)
    core = getattr(server_or_url, "core", None)
    core = core if isinstance(core, InferenceCore) else None
    if core is not None and not getattr(server_or_url, "is_running", True):
        raise ServerStateError("the server is not running", hint="start one with nbserve.serve()")
    token = token if token is not None else getattr(server_or_url, "token", None)
    chosen = protocol or ("inprocess" if core is not None else "http")
    if chosen == "inprocess":
        if core is None:
            raise InvalidInput(f"{type(server_or_url).__name__} runs in another process: there is no in-process API",
                               hint='use protocol="http" or protocol="grpc"')
        return Target(protocol="inprocess", core=core, token=token, server=server_or_url)
    address = getattr(server_or_url, f"{chosen}_address", None)
    port = getattr(server_or_url, f"{chosen}_port", 1)
    if not address or port is None:
        raise InvalidInput(f"this server has no {chosen} endpoint", got=type(server_or_url).__name__,
                           hint=f"start it with its {chosen} endpoint, or pick another protocol")
    # Statistics from the core when it is here: exact and free of network noise.
    return Target(protocol=chosen, address=address, core=core, token=token, server=server_or_url)

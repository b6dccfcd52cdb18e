"""``nbserve.SequenceStepper``: step through one sequence of a stateful model and watch its state.

Each step sends one request of the sequence (``sequence_start`` on the first, ``sequence_end`` with
:meth:`SequenceStepper.end`) and records its inputs, outputs and the sequence's state afterwards.
The history renders as a table; displayed in a notebook, the stepper is a small ipywidgets panel
(Step, End, Restart and the table) that follows steps made from code too.

The state is read from the response when the model lists its state outputs among its outputs (as
``register_stateful`` does by default), else, for the in-kernel server, straight from its sequence
batcher. The stepper talks to the in-kernel server (``nbserve.serve()``), a subprocess server, or
any KServe v2 server by HTTP address (a real Triton included).
"""

from __future__ import annotations

import html
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ServerStateError, require

__all__ = ["SequenceStepper"]


class SequenceStepper:
    """Drive one sequence of a stateful model, one request at a time.

    Args:
        server: a running ``nbserve.serve()`` server, or the ``"host:port"`` of any KServe v2 HTTP
            endpoint.
        model: the stateful model's name.
        sequence_id: the sequence's id (default: a random one).
        inputs: what the widget's Step button sends: a list of input dicts (one per step) or a
            function ``inputs(step_index, state) -> dict``. Steps made from code pass their inputs.
        version: a served version (default: the latest).

    >>> import numpy as np, nbserve
    >>> reg = nbserve.Registry()
    >>> def running_sum(x, total):
    ...     total = total + x
    ...     return {"y": total, "total": total}
    >>> _ = nbserve.register_stateful(running_sum, state=nbserve.StateSpec("total", [1]),
    ...                               example={"x": np.ones((1, 1), "float32")}, registry=reg)
    >>> with nbserve.serve(reg, http=False, grpc=False, metrics=False) as server:
    ...     stepper = SequenceStepper(server, "running_sum", sequence_id=1)
    ...     _ = stepper.step({"x": np.ones((1, 1), "float32")})
    ...     _ = stepper.end({"x": np.ones((1, 1), "float32")})
    >>> stepper.state["total"].tolist(), stepper.ended
    ([[2.0]], True)
    """

    def __init__(
        self,
        server: Any,
        model: str,
        *,
        sequence_id: int | str | None = None,
        inputs: Sequence[Mapping[str, Any]] | Callable[[int, dict[str, Any]], Mapping[str, Any]] | None = None,
        version: int | str | None = None,
    ) -> None:
        self.server = server
        self.model = model
        self.version = version
        self.inputs = inputs
        self.sequence_id = sequence_id if sequence_id is not None else _new_id()
        self.history: list[dict[str, Any]] = []
        self.started = False
        self.ended = False
        self._client: Any = None
        self._states = self._state_names()
        self._widgets: dict[str, Any] | None = None

    # --------------------------------------------------------------------- stepping
    def step(self, inputs: Mapping[str, Any] | None = None, *, end: bool = False) -> dict[str, Any]:
        """Send the next request of the sequence; returns its outputs.

        Raises:
            ServerStateError: the sequence has ended (call :meth:`restart`), or no inputs were given
                and none are scripted.
            NbserveError: whatever the server answers (e.g. InvalidInput for a released sequence).
        """
        if self.ended:
            raise ServerStateError(f"sequence {self.sequence_id!r} has ended", model=self.model,
                                   hint="call stepper.restart() to start a new sequence")
        if inputs is None:
            inputs = self._scripted()
        start_s = time.perf_counter()
        outputs = self._infer(dict(inputs), start=not self.started, end=end)
        elapsed_ms = (time.perf_counter() - start_s) * 1e3
        state = self._read_state(outputs)
        self.history.append({"step": len(self.history), "start": not self.started, "end": end,
                             "inputs": dict(inputs), "outputs": outputs, "state": state, "latency_ms": elapsed_ms})
        self.started = True
        self.ended = end
        self._refresh()
        return outputs

    def end(self, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send the sequence's last request (``sequence_end``)."""
        return self.step(inputs, end=True)

    def restart(self, sequence_id: int | str | None = None) -> None:
        """Forget the history and step a new sequence (a new id unless given)."""
        self.sequence_id = sequence_id if sequence_id is not None else _new_id()
        self.history = []
        self.started = self.ended = False
        self._refresh()

    @property
    def state(self) -> dict[str, Any]:
        """The sequence's state after the last step, by state name ({} before the first step)."""
        return dict(self.history[-1]["state"]) if self.history else {}

    # --------------------------------------------------------------------- transport
    def _scripted(self) -> Mapping[str, Any]:
        if callable(self.inputs):
            return self.inputs(len(self.history), self.state)
        if self.inputs is not None and len(self.history) < len(self.inputs):
            return self.inputs[len(self.history)]
        raise ServerStateError("no inputs for this step", model=self.model,
                               hint="pass them (stepper.step({'x': ...})) or give inputs=[...] or inputs=fn")

    def _core(self) -> Any:
        return getattr(self.server, "core", None) if not isinstance(self.server, str) else None

    def _infer(self, inputs: dict[str, Any], *, start: bool, end: bool) -> dict[str, Any]:
        flags = {"sequence_id": self.sequence_id, "sequence_start": start, "sequence_end": end}
        if not isinstance(self.server, str):
            return dict(self.server.infer(self.model, inputs, version=self.version, **flags))
        from ..serving.remote import http_infer

        return http_infer(self._http(), self.model, inputs, version=self.version, **flags)

    def _http(self) -> Any:
        if self._client is None:
            import tritonclient.http as httpclient

            self._client = httpclient.InferenceServerClient(self.server)
        return self._client

    def _state_names(self) -> list[tuple[str, str]]:
        """(input_name, output_name) of each state in the model's config."""
        core = self._core()
        if core is not None:
            config = core.model_config(self.model, self.version)
            return [(s.input_name, s.output_name) for s in config.sequence_batching.state]
        if isinstance(self.server, str):
            config = self._http().get_model_config(self.model, "" if self.version is None else str(self.version))
        else:
            import json
            import urllib.request

            url = f"http://{self.server.http_address}/v2/models/{self.model}/config"
            with urllib.request.urlopen(url, timeout=10) as response:
                config = json.loads(response.read())
        states = (config.get("sequence_batching") or {}).get("state") or []
        return [(s["input_name"], s["output_name"]) for s in states]

    def _read_state(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        state = {i: np.asarray(outputs[o]) for i, o in self._states if o in outputs}
        if len(state) < len(self._states):
            core = self._core()
            loaded = next((v for v in core.loaded_versions() if v.name == self.model), None) if core else None
            peek = getattr(getattr(loaded, "batcher", None), "peek_state", None)
            held = peek(self.sequence_id) if peek is not None else None
            for name, value in (held or {}).items():
                state.setdefault(name, value)
        return state

    # --------------------------------------------------------------------- display
    def _table(self) -> str:
        head = "<tr><th>step</th><th>flags</th><th>inputs</th><th>outputs</th><th>state after</th><th>ms</th></tr>"
        rows = []
        for row in self.history:
            flags = " ".join(f for f, on in (("START", row["start"]), ("END", row["end"])) if on)
            rows.append(
                f"<tr><td>{row['step']}</td><td>{flags}</td><td>{_cells(row['inputs'])}</td>"
                f"<td>{_cells(row['outputs'])}</td><td>{_cells(row['state'])}</td>"
                f"<td>{row['latency_ms']:.1f}</td></tr>"
            )
        status = "ended" if self.ended else "running" if self.started else "not started"
        title = (f"<b>{html.escape(self.model)}</b> sequence <code>{html.escape(str(self.sequence_id))}</code> "
                 f"({status}, {len(self.history)} step{'s' if len(self.history) != 1 else ''})")
        style = "<style>.nbserve-sequence td, .nbserve-sequence th {padding: 2px 10px; text-align: left; " \
                "vertical-align: top}</style>"
        return f"<div class='nbserve-sequence'>{style}{title}<table>{head}{''.join(rows)}</table></div>"

    def _repr_html_(self) -> str:
        return self._table()

    def __repr__(self) -> str:
        return (f"<SequenceStepper {self.model!r} sequence={self.sequence_id!r} steps={len(self.history)} "
                f"{'ended' if self.ended else 'running' if self.started else 'not started'}>")

    def widget(self) -> Any:
        """The ipywidgets panel: Step, End and Restart buttons over the history table."""
        if self._widgets is None:
            widgets = require("ipywidgets", "notebook", purpose="the sequence stepper")
            step, end, restart = (widgets.Button(description=d) for d in ("Step", "End", "Restart"))
            message = widgets.HTML()
            table = widgets.HTML(self._table())

            def run(action: Callable[[], Any]) -> None:
                try:
                    action()
                    message.value = ""
                except Exception as exc:  # shown in the panel: a button must never fail silently
                    message.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"

            step.on_click(lambda _: run(self.step))
            end.on_click(lambda _: run(self.end))
            restart.on_click(lambda _: run(self.restart))
            box = widgets.VBox([widgets.HBox([step, end, restart]), message, table])
            self._widgets = {"box": box, "table": table, "step": step, "end": end, "message": message}
            self._refresh()
        return self._widgets["box"]

    def _refresh(self) -> None:
        if self._widgets is None:
            return
        self._widgets["table"].value = self._table()
        self._widgets["step"].disabled = self._widgets["end"].disabled = self.ended

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget())


def _new_id() -> int:
    # Random ids keep steppers (and re-run cells) from colliding with each other's sequences.
    return random.getrandbits(62) + 1


def _cells(values: Mapping[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        text = np.array2string(np.asarray(value), precision=4, threshold=12, edgeitems=3) \
            if hasattr(value, "shape") or isinstance(value, (list, tuple)) else repr(value)
        parts.append(f"<b>{html.escape(str(name))}</b> <code>{html.escape(text)}</code>")
    return "<br>".join(parts)

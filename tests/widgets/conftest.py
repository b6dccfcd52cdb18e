"""Fixtures for the widget tests that run without a browser.

Widgets talk to the browser through a Comm. ``comm.create_comm`` is the documented hook a front end
replaces to provide its own; here it returns a Comm that records what the widget publishes, so a
test can send the widget the messages the browser would send and read every reply and state update.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("anywidget", reason='the widgets need the notebook extra: pip install "nbserve[notebook]"')

import comm  # noqa: E402  (installed with anywidget)
from comm.base_comm import BaseComm  # noqa: E402

from nbserve.registry import Registry  # noqa: E402
from tiny_readability import register_readability  # noqa: E402


class RecordingComm(BaseComm):
    """A Comm whose messages go to a list instead of a kernel's iopub channel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:
        self.published.append((msg_type, data or {}))

    # -- what the tests use ------------------------------------------------------------
    def replies(self) -> list[dict[str, Any]]:
        return [d["content"] for t, d in self.published if t == "comm_msg" and d.get("method") == "custom"]

    def updates(self) -> list[dict[str, Any]]:
        return [d["state"] for t, d in self.published if t == "comm_msg" and d.get("method") == "update"]

    def from_browser(self, content: dict[str, Any]) -> None:
        """Deliver a custom message as the browser's ``model.send(content)`` does."""
        self.handle_msg({"content": {"comm_id": self.comm_id, "data": {"method": "custom", "content": content}},
                         "buffers": []})


@pytest.fixture(autouse=True)
def recording_comms(monkeypatch):
    monkeypatch.setattr(comm, "create_comm", RecordingComm)


@pytest.fixture
def readability_registry():
    """A registry holding the four tiny readability models."""
    reg = Registry()
    register_readability(reg)
    yield reg
    reg.clear()

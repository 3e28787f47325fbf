"""Shared fixtures for the unit tests."""
from __future__ import annotations

import threading
from pathlib import Path
from queue import Queue

import mockssh
import mockssh.server
import pytest

MOCK_USER_KEY = Path(mockssh.__file__).parent / "sample-user-key"


class _RaceFreeHandler(mockssh.server.Handler):
    """mockssh's connection handler with its channel race closed.

    Upstream's accept loop does ``if chanid not in queues: queues[chanid] = Queue()``
    while paramiko's transport thread may already have stored the exec request
    under that id (``setdefault(...).put(command)``). When the transport thread
    wins, the loop replaces the queue holding the command and the channel waits
    forever: on a busy CI machine a test hung until pytest-timeout.
    """

    def run(self) -> None:
        self.transport.start_server(server=self)
        while True:
            channel = self.transport.accept()
            if channel is None:
                break
            self.command_queues.setdefault(channel.chanid, Queue())
            threading.Thread(target=self.handle_client, args=(channel,), daemon=True).start()


class RaceFreeServer(mockssh.Server):
    handler_cls = _RaceFreeHandler


@pytest.fixture(scope="module")
def server() -> mockssh.Server:
    """An in-process mock sshd (paramiko) that runs commands with the local shell."""
    with RaceFreeServer({"ndtest": str(MOCK_USER_KEY)}) as s:
        yield s

"""A managed retrieval service ends by itself when the process that started it dies, even by
SIGKILL (no ``finally`` runs): it watches a pipe whose other end dies with its starter."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

STARTER = """
import sys, time
from deepretrieval.train.service import ManagedService
service = ManagedService(["scifact"], startup_timeout=300).start()
print(service.proc.pid, service.port, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_service_exits_when_its_starter_is_killed(scifact_index):
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ))
    line = starter.stdout.readline()
    assert line, "the starter did not start the service"
    service_pid = int(line.split()[0])
    assert _alive(service_pid)
    os.kill(starter.pid, signal.SIGKILL)
    starter.wait(30)
    deadline = time.monotonic() + 60
    while _alive(service_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _alive(service_pid)
    if alive:  # do not leave it behind, whatever the verdict
        os.killpg(service_pid, signal.SIGKILL)
    assert not alive, "the service outlived the process that started it"

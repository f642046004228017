"""A service started by another process ends when that process dies, however it died.

The starter (:class:`deepretrieval.train.service.ManagedService`) keeps the write end of a pipe
and passes the read end to the service, naming its descriptor in ``DEEPRETRIEVAL_LIFELINE_FD``.
Nobody ever writes to it: when the starter exits — normally, by an exception, SIGKILL or a crash —
the kernel closes its end, the read returns end-of-file, and the service stops itself (SIGTERM to
its own process, which uvicorn answers with a graceful shutdown; a hard exit after
``grace_s`` if that hangs). Unlike ``PR_SET_PDEATHSIG`` this does not depend on which thread of
the starter created the child, and works on every POSIX system.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

ENV = "DEEPRETRIEVAL_LIFELINE_FD"


def watch(grace_s: float = 15.0) -> bool:
    """Start the watcher when this process was given a lifeline; returns whether it was."""
    raw = os.environ.pop(ENV, None)  # children of this process must not watch the same pipe
    if not raw:
        return False
    try:
        fd = int(raw)
        os.fstat(fd)
    except (ValueError, OSError):
        log.warning("%s=%r is not an open descriptor: not watching the parent", ENV, raw)
        return False

    def run() -> None:
        while True:
            try:
                if os.read(fd, 1) == b"":
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        log.warning("the process that started this service has exited: stopping")
        threading.Timer(grace_s, lambda: os._exit(1)).start()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=run, name="lifeline", daemon=True).start()
    return True

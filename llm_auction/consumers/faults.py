"""Whose fault is a failure, the input's or the infrastructure's: the one place that decides.

A service treats the two oppositely (:mod:`llm_auction.consumers.service`):

- an **input fault** (a record that does not decode or validate, a handler's rejection, an error
  that one record triggers) is dead-lettered with the reason and committed past: retrying cannot
  help, and one bad record must not stop the stream;
- an **infrastructure fault** (the warehouse or broker unreachable, a timeout, a server error,
  memory exhausted, a policy version the responder has not loaded) says nothing about the record:
  the batch is retried with backoff, never dead-lettered and never committed past, and the service
  stops after ``ServiceConfig.fault_timeout_s`` so that a restart or an operator deals with it.
  Dead-lettering good events during a ClickHouse restart was the defect this separates.

:func:`is_transient` applies these rules to an exception and to what it was raised from (an
explicit ``raise ... from``, or the error a wrapper translated with ``from None``, as
:func:`llm_auction.infra.clickhouse.describe_error` does):

1. data the warehouse refused (ClickHouse parse, type and range errors, :data:`DATA_ERROR_CODES`;
   a driver ``DataError``) is an input fault, whatever wraps it;
2. infrastructure: :class:`~llm_auction.models.adllm.UnknownPolicy` (a deployment fault),
   ``MemoryError`` and torch's ``OutOfMemoryError`` (CPU or CUDA; matched by name, torch is not
   imported), any ``OSError`` (connection refused or reset, timeouts, a full disk),
   :class:`~llm_auction.infra.errors.InfraError`, and whatever the Kafka, ClickHouse and HTTP
   client libraries raise;
3. anything else is an input fault: a bug that one record triggers is isolated item by item and
   dead-lettered instead of stopping the stream (the design's "bad input never stops a consumer").
"""

from __future__ import annotations

from collections.abc import Iterator

from llm_auction.infra.clickhouse import error_code
from llm_auction.infra.errors import InfraError
from llm_auction.models.adllm import UnknownPolicy

# ClickHouse error codes that mean "this data was refused", not "the server cannot work now".
DATA_ERROR_CODES = frozenset({
    6,  # CANNOT_PARSE_TEXT
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  # CANNOT_PARSE_DATE
    41,  # CANNOT_PARSE_DATETIME
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
})
# Top-level packages whose exceptions are infrastructure (clients of the broker, the warehouse, HTTP).
CLIENT_PACKAGES = frozenset({"kafka", "aiokafka", "clickhouse_connect", "chdb", "urllib3", "requests", "httpx"})


def is_transient(exc: BaseException) -> bool:
    """True for an infrastructure fault (retry, do not commit past), False for an input fault."""
    chain = list(_chain(exc))
    if any(_data_refused(e) for e in chain):
        return False
    return any(_infrastructure(e) for e in chain)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else (e.__context__ if e.__suppress_context__ else None)


def _names(e: BaseException) -> set[str]:
    return {t.__name__ for t in type(e).__mro__}


def _from_client_library(e: BaseException) -> bool:
    return type(e).__module__.split(".", 1)[0] in CLIENT_PACKAGES


def _data_refused(e: BaseException) -> bool:
    if not (isinstance(e, InfraError) or _from_client_library(e)):
        return False
    return "DataError" in _names(e) or error_code(e) in DATA_ERROR_CODES


def _infrastructure(e: BaseException) -> bool:
    return (
        isinstance(e, (UnknownPolicy, MemoryError, OSError, InfraError))
        or "OutOfMemoryError" in _names(e)
        or (isinstance(e, RuntimeError) and "CUDA out of memory" in str(e))  # torch before OutOfMemoryError
        or _from_client_library(e)
    )

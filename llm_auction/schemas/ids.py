"""Stable ids and hashes: the same value in every process, on every machine, in every run.

- :func:`stable_hash`: a 64-bit integer from strings, for anything that must pick the same
  bucket, example or split wherever it runs (Python's ``hash`` is salted per process).
- :class:`DerivedIds`: uuid5 event ids for events whose identity follows from another's. A
  response's id follows from its query's id and the policy version, a click's from its response's
  id and the ad: a redelivered input then yields the same ids, which the warehouse keeps once.
"""

from __future__ import annotations

import hashlib
import uuid

_SEP = "\x1f"  # ASCII unit separator: ("a", "bc") and ("ab", "c") hash apart


def stable_hash(*parts: str) -> int:
    """A 64-bit unsigned hash of ``parts``: sha256 of the parts joined by ``"\\x1f"``, first 8 bytes big-endian.

    Use it for every stable choice (id buckets, holdout splits, rotations), not ``hash``: the
    value is fixed across processes, machines and Python versions, and uniform enough that
    ``stable_hash(...) % n`` and ``stable_hash(...) / 2**64`` are unbiased for practical ``n``.
    """
    return int.from_bytes(hashlib.sha256(_SEP.join(parts).encode("utf-8")).digest()[:8], "big")


class DerivedIds:
    """``ids(name) == str(uuid.uuid5(namespace, name))`` for one fixed namespace."""

    __slots__ = ("namespace",)

    def __init__(self, namespace: str | uuid.UUID):
        self.namespace = uuid.UUID(str(namespace))

    def __call__(self, name: str) -> str:
        return str(uuid.uuid5(self.namespace, name))


__all__ = ["DerivedIds", "stable_hash"]

"""Derived event ids: uuid5 of a namespace and a name, for events whose identity follows from another's.

A response's id follows from its query's id and the policy version, a click's from its response's
id and the ad: a redelivered input then yields the same ids, which the warehouse keeps once. The
services compute one per output event, so the string is written out here: the SHA-1 of namespace
and name with the version (5) and variant bits set, formatted like ``str(uuid.UUID)``. That is
``str(uuid.uuid5(namespace, name))`` at about a third of the cost (2.4 vs 7.4 us): building a UUID
object, with its argument checks, only to print it cost twice the hashing.
"""

from __future__ import annotations

import hashlib
import uuid

_CLEAR = ~(0xF000 << 64 | 0xC000 << 48)  # the version and variant bits of a 128-bit uuid
_SET = 0x5000 << 64 | 0x8000 << 48  # version 5, RFC 4122 variant


class DerivedIds:
    """``ids(name) == str(uuid.uuid5(namespace, name))`` for one fixed namespace."""

    __slots__ = ("namespace", "_ns")

    def __init__(self, namespace: str | uuid.UUID):
        self.namespace = uuid.UUID(str(namespace))
        self._ns = self.namespace.bytes

    def __call__(self, name: str) -> str:
        x = "%032x" % (int.from_bytes(hashlib.sha1(self._ns + name.encode()).digest()[:16], "big") & _CLEAR | _SET)
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"

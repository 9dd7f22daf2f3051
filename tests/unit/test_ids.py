"""Stable hashes and derived ids: fixed values, the same in every process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid

from llm_auction.models.user_sim import click_event_id
from llm_auction.schemas.ids import DerivedIds, stable_hash


def test_stable_hash_is_sha256_of_the_joined_parts_first_8_bytes_big_endian():
    # the formula models/prompt.py's rotations were built on: switching to the helper keeps them
    for parts in [("ad", "q-1"), ("wording", "q-1"), ("",), ("user:", "u00001"), ("0", "q")]:
        want = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()[:8], "big")
        assert stable_hash(*parts) == want
    assert stable_hash("ad", "q-1") == 0x63276641B86CE463  # pinned: buckets and splits depend on it


def test_stable_hash_separates_parts_and_is_the_same_in_another_process():
    assert stable_hash("a", "bc") != stable_hash("ab", "c") != stable_hash("abc")
    code = "from llm_auction.schemas.ids import stable_hash; print(stable_hash('user:', 'u1'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"})
    assert int(out.stdout) == stable_hash("user:", "u1")


def test_derived_ids_are_uuid5():
    ns = "2b0c8a52-3f43-4a57-8f1e-8d3c5a9e6b20"
    ids = DerivedIds(ns)
    for name in ["q1/v0", "", "é/ü", "x" * 500]:
        assert ids(name) == str(uuid.uuid5(uuid.UUID(ns), name))


def test_click_event_id_is_the_uuid5_of_response_and_ad():
    ns = uuid.UUID("6f1d5c1e-4b7a-4f0e-9a51-2c3c0c7d1a11")  # fixed: changing it would change every click id
    pairs = [("eb5014fa-84cc-5c79-b56a-7d8bb4eb282f", "Ad-7499"), ("réponse ü", "Ad-9999")] + [(f"r-{i}", "Ad-0001") for i in range(2000)]
    for rid, ad in pairs:
        assert click_event_id(rid, ad) == str(uuid.uuid5(ns, f"{rid}/{ad}"))

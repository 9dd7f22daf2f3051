"""The wire format: event models, their JSON codec, topic names and runtime settings.

Imports nothing else of the package, so every layer can depend on it.
"""

from .codec import EVENT_TYPES, SchemaError, decode, encode, to_dict
from .candidates import Candidates
from .events import (
    SCHEMA_VERSION,
    Ad,
    CandidateAd,
    ClickEvent,
    DeadLetter,
    EpochRequest,
    Event,
    PctrVersion,
    PolicyVersion,
    QueryEvent,
    ResponseEvent,
    RolloutEvent,
    UserProfile,
)

__all__ = [
    "SCHEMA_VERSION", "EVENT_TYPES", "SchemaError", "decode", "encode", "to_dict",
    "Ad", "CandidateAd", "Candidates", "ClickEvent", "DeadLetter", "EpochRequest", "Event", "PctrVersion", "PolicyVersion",
    "QueryEvent", "ResponseEvent", "RolloutEvent", "UserProfile",
]

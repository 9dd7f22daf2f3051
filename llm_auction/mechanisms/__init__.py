"""Ad mechanisms as first-class allocation rules, one protocol (:mod:`.base`).

A mechanism takes query events (the candidates it may show, their bids, the profile) and returns,
per query, the answer, its allocation, the per-click prices and what it cost (generations,
generated tokens, seconds). LLM-Auction is one (a policy version, one sample); the baselines of
the paper are others:

- ``pretrained`` / ``policy:<version>`` (:class:`.llm.PolicySample`): one answer of a policy version;
- ``mosaic[:N]`` (:class:`.llm.BestOfN`): N answers of the pretrained policy, the one with the
  highest Eq. 8 reward under the served pCTR (the paper's re-implementation of MOSAIC);
- ``slot`` (:class:`.slot.SlotAuction`): the pre-generation design the paper argues against: ads
  ranked by bid x pCTR before generation, one slot sold at a GSP price, the LLM writing around it.

Below the services: a responder serves one, the evaluation and the loop compose them. They reach
the model only through the ``AdLLM`` protocol and the reward only through a pCTR function, so
this package imports neither models nor the trainer. :func:`.factory.make_mechanism` builds one
from its name; :class:`.arms.Arms` tells a responder which arm names are mechanisms.
"""

from .arms import Arms, arm_versions, is_mechanism
from .base import Cost, Mechanism, Outcome
from .factory import make_mechanism, mechanism_names
from .llm import BestOfN, PolicySample
from .slot import SlotAuction, gsp_price

__all__ = ["Arms", "BestOfN", "Cost", "Mechanism", "Outcome", "PolicySample", "SlotAuction", "arm_versions", "gsp_price", "is_mechanism", "make_mechanism", "mechanism_names"]

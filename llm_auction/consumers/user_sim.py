"""The user-sim service (``llm-auction serve user-sim``): responses in, one click decision per exposed ad out.

The simulator is the environment's ground truth (``llm_auction.models.user_sim``); this service
only moves its decisions onto ``auction.clicks``, keyed by query so a query's response and
clicks share a partition.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_auction.schemas.topics import CLICKS

from .service import Item, Outcome, Output


class UserSimHandler:
    def __init__(self, simulator):
        self.simulator = simulator

    def handle(self, items: Sequence[Item]) -> Outcome:
        responses = [it.event for it in items]
        out = Outcome()
        for resp, clicks in zip(responses, self.simulator.clicks_batch(responses)):
            out.outputs.extend(Output(CLICKS, resp.query_id, c) for c in clicks)
        return out

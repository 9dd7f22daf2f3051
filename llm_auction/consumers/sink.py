"""The warehouse sink: queries, responses and clicks in, batched ClickHouse inserts out.

Batches close on size or age (the service loop's ``batch_size`` / ``batch_max_wait_s``), so
inserts stay large (ClickHouse wants few big parts) and bounded in delay. Offsets are committed
after the insert returns; a crash between the two re-inserts the batch, which the warehouse
deduplicates by ``event_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_auction.infra import warehouse
from llm_auction.schemas import ClickEvent, QueryEvent, ResponseEvent

from .service import Item, Outcome

INSERTERS = (
    (QueryEvent, warehouse.insert_queries),
    (ResponseEvent, warehouse.insert_responses),
    (ClickEvent, warehouse.insert_clicks),
)


class SinkHandler:
    def __init__(self, client):
        self.client = client

    def handle(self, items: Sequence[Item]) -> Outcome:
        for model, insert in INSERTERS:
            batch = [it.event for it in items if isinstance(it.event, model)]
            if batch:
                insert(self.client, batch)
        return Outcome()

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
        # One pass, by exact type (isinstance on pydantic models goes through ABCMeta; the sink's CPU
        # per event is in docs/benchmarks.md). A subclass of an event model still lands with its model.
        batches: dict[type, list] = {model: [] for model, _ in INSERTERS}
        for it in items:
            event = it.event
            batch = batches.get(type(event))
            if batch is None:
                batch = next((batches[m] for m, _ in INSERTERS if isinstance(event, m)), None)
                if batch is None:
                    continue
            batch.append(event)
        for model, insert in INSERTERS:
            if batches[model]:
                insert(self.client, batches[model])
        return Outcome()

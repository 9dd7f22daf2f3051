"""The evaluation's figures, recomputed from the events in ClickHouse (``llm-auction eval``'s stage 2).

:func:`answers` reads one row per served answer (``infra.warehouse.answer_rows``: the monitor's
per-answer definitions) and adds the held-out judge's view of the same stored answer;
:func:`table` turns the rows into one summary per mechanism, each figure a mean over queries with
a 95% percentile-bootstrap interval (``trainer.stats``), and the paired difference against
``pretrained`` on the same queries and bids.

Definitions, per answer (price = the click's price: the bid under first price, the GSP price in
the slot auction):

- ``revenue``: sum of price x clicked (realized clicks);
- ``expected_revenue``: sum of price x the simulator's exact click probability;
- ``reward``: Eq. 8 with the exact click probabilities, expected revenue - 10 n_ads^2 - 500 x
  format error (the paper's objective; ``realized_reward`` is the monitor's, with the clicks);
- ``judge_expected_revenue`` / ``judge_reward``: the same with the held-out judge's probabilities
  (``trainer.evaluation.held_out_judge``), which no policy was trained on;
- ``generations``, ``generated_tokens``, ``generation_s``: what the mechanism spent on the query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from llm_auction.auction import AD_COUNT_PENALTY, FORMAT_ERROR_PENALTY

BASELINE = "pretrained"
QUERIES_RUN = "eval"  # the run id the evaluation's query events are built under (replay_events); each arm's replay has its own

# (report name, row column): means over queries with intervals
MEANS = (
    ("revenue_per_query", "revenue"), ("expected_revenue_per_query", "expected_revenue"), ("reward_per_query", "reward"),
    ("realized_reward_per_query", "realized_reward"), ("judge_expected_revenue_per_query", "judge_expected_revenue"),
    ("judge_reward_per_query", "judge_reward"), ("ads_per_answer", "n_ads"), ("format_error_rate", "format_error"),
    ("generations_per_query", "generations"), ("generated_tokens_per_query", "generated_tokens"), ("seconds_per_query", "generation_s"),
)
PAIRED = ("revenue_per_query", "expected_revenue_per_query", "reward_per_query", "judge_expected_revenue_per_query", "judge_reward_per_query")


def replay_key(query_id: str, run_id: str) -> str:
    """A replayed query's id without its run tag (``<world id>.<run>.<n>`` -> ``<world id>.<n>``):
    the same query with the same bids in every arm's replay (``producers.replay``)."""
    return query_id.replace(f".{run_id}.", ".")


def answers(client, runs: Mapping[str, str], settings, encoder, queries) -> list[dict[str, Any]]:
    """One dict per answer of each arm's run (``runs``: arm -> run id): the warehouse's per-answer
    figures, the pairing ``key`` (the query id without its run tag: the same query and bids in
    every arm), and the held-out judge's expected revenue and reward of the stored answer.
    ``queries`` are the replay's events under the run id :data:`QUERIES_RUN`."""
    from llm_auction.infra import warehouse
    from llm_auction.trainer.evaluation import held_out_judge

    by_key = {replay_key(q.query_id, QUERIES_RUN): q for q in queries}
    rows = warehouse.answer_rows(client, list(runs.values()))
    texts = warehouse.answer_texts(client, list(runs.values()))
    out = []
    for r in rows.to_dict(orient="records"):  # serve_arm checked that each run's answers came from its arm
        arm = r["policy_version"]
        r = {**r, "arm": arm, "key": replay_key(r["query_id"], runs[arm])}
        r["realized_reward"] = r["reward"]  # the monitor's: realized revenue - penalty
        r["reward"] = r["expected_revenue"] - _penalty(r)
        out.append(r)
    judge = held_out_judge(settings, encoder)
    items = [(by_key[r["key"]], texts[r["query_id"], r["arm"]]["text"], texts[r["query_id"], r["arm"]]["exposed_ad_ids"]) for r in out]
    probs = judge.score(items) if items else []
    for r, (_, _, exposed), p in zip(out, items, probs):
        prices = texts[r["query_id"], r["arm"]]["prices"]  # the query's bids under first price
        r["exposed_ad_ids"] = list(exposed)
        r["judge_expected_revenue"] = sum(prices[a] * p.get(a, 0.0) for a in exposed)
        r["judge_reward"] = r["judge_expected_revenue"] - _penalty(r)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in out]


def _penalty(r: Mapping[str, Any]) -> float:
    return AD_COUNT_PENALTY * r["n_ads"] ** 2 + FORMAT_ERROR_PENALTY * r["format_error"]


def _ci(values) -> dict[str, Any]:
    from llm_auction.trainer.stats import interval

    return interval(values)


def table(rows: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> list[dict[str, Any]]:
    """Per arm (in ``arms``' order): ``name``, ``queries``, every :data:`MEANS` figure and ``ctr``
    as {mean, ci95}, and ``vs_pretrained``: the paired differences of :data:`PAIRED` against
    ``pretrained`` (same queries), when it was evaluated."""
    from llm_auction.trainer.stats import ratio_ci

    df = pd.DataFrame(list(rows))
    out = []
    base = df[df["arm"] == BASELINE] if BASELINE in set(df.get("arm", [])) else None
    for arm in arms:
        a = df[df["arm"] == arm]
        if a.empty:
            continue
        entry: dict[str, Any] = {"name": arm, "queries": len(a)}
        for name, col in MEANS:
            entry[name] = _ci(a[col].to_numpy(dtype=float))
        ctr, low, high = ratio_ci(a["clicks"].to_numpy(dtype=float), a["n_ads"].to_numpy(dtype=float))
        entry["ctr"] = {"mean": ctr, "ci95": [low, high]}
        if base is not None and arm != BASELINE:
            paired = a.merge(base, on="key", suffixes=("", "_base"), how="inner")
            entry["vs_pretrained"] = {name: _ci((paired[col] - paired[f"{col}_base"]).to_numpy(dtype=float)) for name, col in MEANS if name in PAIRED}
            entry["vs_pretrained"]["queries"] = len(paired)
        out.append(entry)
    return out


__all__ = ["BASELINE", "MEANS", "QUERIES_RUN", "PAIRED", "answers", "replay_key", "table"]

"""IRPO's revenue ceiling in this world: what the reward-optimal answer earns, per lambda.

    .venv/bin/python bench/irpo_ceiling.py [--queries 40] [--seed 1000] [--audit REG/policy/policy-0001 ...]

Why: on SmolLM2 with the oracle reward, IRPO epochs raised Eq. 8's mean reward but lowered revenue
per query (docs/irpo.md). Eq. 8 charges lambda * 10 * N_ad^2 (10 for one ad, 40 for two) and
lambda * 500 per format error, while one ad earns bid x click probability. This script asks the
world itself, with no language model in the way, whether revenue can rise at a given lambda.

Part A (ceiling). The same held-out queries and bids as ``llm-auction irpo evaluate`` (first
``--queries`` test queries, bids from ``--seed``, the responder's narrowing to K candidates).
For every query, every allocation of 0, 1 or 2 of the shown candidates is written into a few plain
answer templates (markers correct, ads in the flow of one paragraph), and the user simulator gives
the exact click probabilities (the oracle). Per lambda, the reward-optimal (template, allocation)
of each query is chosen; the table gives its mean reward, its expected revenue per query, ads per
answer, and the share of queries that get an ad. lambda = 0 is the revenue-optimal answer.

Part B (what DPO is pushed toward), from epoch audit files (``--audit`` version folders holding
``irpo_samples.parquet``): each sample's reward is recomputed at each lambda from its stored
pCTRs, bids, ad count and format error, pairs are formed with ``--delta-th`` and ``--pairing``
(both rules by default) as ``trainer.irpo.pair_table`` does, and the table gives the pairs, the skipped queries, and the
expected revenue and ads of the chosen against the rejected answers. Chosen answers that earn
more than the rejected ones push the policy toward revenue; chosen answers with fewer ads push it
toward inserting less.

Part C prints ``irpo evaluate`` outputs given with ``--evaluations`` beside the ceiling, and keeps them.

Writes bench/results/irpo_ceiling.json (the tables, per-query choices at lambda 1, the machine).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

# Plain answers, one paragraph, markers early and inside a sentence (neither detached nor trailing).
# {ads} is one marker, or two joined by the template's own conjunction.
TEMPLATES = {
    "plain": "Good question. For this, {ads} a sensible pick. Start with the basics, compare a few options side by side, "
             "and build up as you learn what works for you.",
    "echo": "About your question ({query}): {ads} a sensible pick. Keep it simple at first, read a few honest reviews, "
            "and add more once you know what you enjoy.",
    "middle": "Here is what I would do. Set a budget and read a few honest reviews first; {ads} a dependable option "
              "for this. Then build up slowly as you learn what you need.",
}


def marker(ad) -> str:
    return f"@{ad.title}@[{ad.ad_id}]"


def answer(template: str, query: str, ads) -> str:
    """The template with 0, 1 or 2 markers (0 ads: the same sentence about "the usual options")."""
    if not ads:
        return TEMPLATES[template].format(query=query.rstrip("?"), ads="the usual options are")
    ads_text = marker(ads[0]) + " is" if len(ads) == 1 else f"{marker(ads[0])} or {marker(ads[1])} is"
    return TEMPLATES[template].format(query=query.rstrip("?"), ads=ads_text)


def allocations(candidates, max_ads: int = 2):
    """Every choice of 0..max_ads of the shown candidates, in candidate order."""
    out = [()]
    for n in range(1, max_ads + 1):
        out += list(itertools.combinations(candidates, n))
    return out


def choose(table: pd.DataFrame, lam: float) -> pd.DataFrame:
    """Per query, the row with the highest Eq. 8 reward at ``lam`` (first on ties: fewer ads first)."""
    t = table.assign(reward=table["revenue"] - lam * (10.0 * table["n_ads"] ** 2 + 500.0 * table["format_error"]))
    return t.loc[t.groupby("query_id", sort=False)["reward"].idxmax()]


def ceiling_rows(table: pd.DataFrame, lams) -> list[dict]:
    rows = []
    for lam in lams:
        best = choose(table, lam)
        rows.append({
            "lambda": lam, "mean_reward": round(float(best["reward"].mean()), 2), "revenue_per_query": round(float(best["revenue"].mean()), 2),
            "ads_per_answer": round(float(best["n_ads"].mean()), 3), "queries_with_ad": round(float((best["n_ads"] > 0).mean()), 3),
        })
    return rows


def audit_rows(samples: pd.DataFrame, lams, delta_th: float, pairing: str) -> list[dict]:
    """Part B: the pairs an epoch's samples give at each lambda, and what their chosen side earns."""
    from llm_auction.trainer.irpo import expected_revenue, pair_table

    s = samples.assign(revenue=expected_revenue(samples))
    penalty = 10.0 * s["n_ads"].astype(float) ** 2 + 500.0 * s["format_error"].astype(float)
    rows = []
    for lam in lams:
        r = s.assign(reward=s["revenue"] - lam * penalty)
        pairs, skipped = pair_table(r, delta_th, pairing)
        by_text = r.drop_duplicates(["query_id", "text"]).set_index(["query_id", "text"])
        ch = by_text.loc[list(zip(pairs["query_id"], pairs["chosen_text"]))]
        rj = by_text.loc[list(zip(pairs["query_id"], pairs["rejected_text"]))]
        rows.append({
            "lambda": lam, "pairs": len(pairs), "skipped_queries": skipped,
            "chosen_revenue": round(float(ch["revenue"].mean()), 2) if len(pairs) else None,
            "rejected_revenue": round(float(rj["revenue"].mean()), 2) if len(pairs) else None,
            "chosen_ads": round(float(ch["n_ads"].mean()), 2) if len(pairs) else None,
            "rejected_ads": round(float(rj["n_ads"].mean()), 2) if len(pairs) else None,
            "rejected_format_error": round(float(rj["format_error"].mean()), 2) if len(pairs) else None,
            "samples_mean_revenue": round(float(r["revenue"].mean()), 2),
        })
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    cols = list(rows[0])
    w = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(x) for c, x in zip(cols, w)))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print("  ".join(str(r[c]).ljust(x) for c, x in zip(cols, w)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("var/world"))
    ap.add_argument("--queries", type=int, default=40, help="first N test queries (as `irpo evaluate`)")
    ap.add_argument("--seed", type=int, default=1000, help="bid seed (as `irpo evaluate --seed`)")
    ap.add_argument("--candidates-k", type=int, default=8, help="candidates shown per query (the responder's narrowing)")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1, 0.0])
    ap.add_argument("--audit", type=Path, nargs="*", default=[], help="policy version folders with irpo_samples.parquet (part B)")
    ap.add_argument("--evaluations", type=Path, nargs="*", default=[], help="`irpo evaluate` JSON outputs to print beside the ceiling (part C)")
    ap.add_argument("--delta-th", type=float, default=10.0)
    ap.add_argument("--pairing", choices=("all", "worst"), nargs="+", default=["worst", "all"], help="pairing rules for part B")
    args = ap.parse_args()
    logging.getLogger("llm_auction").setLevel(logging.WARNING)

    from llm_auction.models.encoder import load_encoder
    from llm_auction.models.retrieval import candidate_picker
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.producers.world import World
    from llm_auction.trainer import irpo
    from llm_auction.trainer.irpo_config import IRPOConfig

    t0 = time.perf_counter()
    enc = load_encoder()
    sim = make_user_simulator("embedding", seed=7, encoder=enc)
    cfg = IRPOConfig(queries=args.queries, split="test", bid_seed=args.seed, candidates_k=args.candidates_k)
    # exactly `irpo evaluate`'s queries and bids
    queries = irpo.narrow(irpo.build_offline_set(World(args.world), cfg, irpo.epoch_bid_seed(cfg, "evaluate")), candidate_picker(args.candidates_k, enc))
    items, meta = [], []
    for q in queries:
        cands = [q.candidate(a) for a in q.candidates.ad_ids]
        for tpl in TEMPLATES:
            for ads in allocations(cands):
                text = answer(tpl, q.query, ads)
                items.append((q, text))
                meta.append((q, tpl, ads, text))
    probs = sim.answer_probabilities(items)
    rows = []
    from llm_auction.auction import allocate

    for (q, tpl, ads, text), p in zip(meta, probs):
        alloc = allocate(text, q.candidates)
        bids = q.bids()
        if alloc.format_error or set(alloc.exposed) != {a.ad_id for a in ads}:
            raise RuntimeError(f"template {tpl} did not insert {[a.ad_id for a in ads]} cleanly: {alloc}")
        rows.append({
            "query_id": q.query_id, "template": tpl, "ads": " ".join(a.ad_id for a in ads), "n_ads": len(ads), "format_error": False,
            "revenue": float(sum(bids[a] * p[a] for a in alloc.exposed)), "pctr": json.dumps(p), "bids": json.dumps({a.ad_id: bids[a.ad_id] for a in ads}),
        })
    table = pd.DataFrame(rows)
    out: dict = {"queries": len(queries), "seed": args.seed, "candidates_k": args.candidates_k, "templates": TEMPLATES, "answers_scored": len(table)}

    ceiling = ceiling_rows(table, args.lambdas)
    print_table(f"A. reward-optimal answer among {len(TEMPLATES)} templates x (0, 1 or 2 of {args.candidates_k} shown ads), "
                f"{len(queries)} test queries, bids seed {args.seed} (oracle click probabilities)", ceiling)
    per_t = []
    for tpl in TEMPLATES:
        for lam in (1.0, 0.0):
            r = ceiling_rows(table[table["template"] == tpl], [lam])[0]
            per_t.append({"template": tpl, **r})
    print_table("A'. the same, one template at a time", per_t)

    single = table[table["n_ads"] == 1].copy()
    single["p"] = [next(iter(json.loads(p).values())) for p in single["pctr"]]
    single["bid"] = [next(iter(json.loads(b).values())) for b in single["bids"]]
    best1 = single.groupby("query_id")["revenue"].max()
    stats = {
        "single_ad_p_mean": round(float(single["p"].mean()), 4),
        "single_ad_p_median": round(float(single["p"].median()), 4),
        "single_ad_p_p90": round(float(single["p"].quantile(0.9)), 4),
        "single_ad_bid_x_p_mean": round(float(single["revenue"].mean()), 2),
        "best_single_ad_revenue_mean": round(float(best1.mean()), 2),
        "queries_best_single_ad_over_10": round(float((best1 > 10).mean()), 3),
        "queries_best_single_ad_over_5": round(float((best1 > 5).mean()), 3),
        "queries_best_single_ad_over_2_5": round(float((best1 > 2.5).mean()), 3),
    }
    print_table("A''. one ad in the best template: click probability and bid x p over all shown candidates", [stats])

    audits = {}
    for folder in args.audit:
        s = pd.read_parquet(folder / irpo.SAMPLES_FILE)
        for pairing in args.pairing:
            rows_b = audit_rows(s, args.lambdas, args.delta_th, pairing)
            audits[f"{folder} {pairing}"] = rows_b
            print_table(f"B. {folder}: {s['query_id'].nunique()} queries x {s.groupby('query_id').size().max()} samples, "
                        f"pairs at delta_th {args.delta_th}, pairing '{pairing}'", rows_b)

    evaluations = {}
    for path in args.evaluations:
        ev = json.loads(path.read_text())
        evaluations[str(path)] = ev
        rows_c = [{"policy": v, **{k: f"{m[k]['mean']} ({m[k]['ci95'][0]}..{m[k]['ci95'][1]})" for k in ("mean_reward", "revenue_per_query", "format_error_rate", "mean_ads")}}
                  for v, m in ev["policies"].items()]
        if "difference" in ev:
            d = ev["difference"]
            rows_c.append({"policy": "paired difference", "mean_reward": f"{d['mean_reward']['mean']} ({d['mean_reward']['ci95'][0]}..{d['mean_reward']['ci95'][1]})",
                           "revenue_per_query": f"{d['revenue_per_query']['mean']} ({d['revenue_per_query']['ci95'][0]}..{d['revenue_per_query']['ci95'][1]})",
                           "format_error_rate": "", "mean_ads": ""})
        print_table(f"C. {path}: held-out evaluation, {ev['queries']} queries x {ev['samples']} answers, seed {ev['seed']}", rows_c)

    out |= {
        "evaluations": evaluations,
        "ceiling": ceiling, "ceiling_per_template": per_t, "single_ad": stats, "audit": audits,
        "audit_settings": {"delta_th": args.delta_th, "pairing": args.pairing},
        "choices_lambda_1": choose(table, 1.0)[["query_id", "template", "ads", "revenue", "reward"]].to_dict("records"),
        "seconds": round(time.perf_counter() - t0, 1), "machine": machine(),
    }
    print(f"\nwrote {write_results('irpo_ceiling', out)} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The held-out judge against the training click model, on the same answers (docs/user-simulator.md).

Answers built from the synthetic world's query templates, one with an ad of the question's
interest categories and one with an unrelated ad, in three placements (woven in, appended below
the answer, two ads competing), scored by the training model (``ClickModelConfig()``) and the
held-out judge (``HELD_OUT_JUDGE``): mean click probability per kind of answer under each, and
the rank correlation of the two. One command; prints a table and writes bench/results/judge.json.

    .venv/bin/python bench/judge.py [--queries 80]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_results  # noqa: E402


def answers(n: int):
    """(query, profile, answer text, kind) for ``n`` world questions."""
    from llm_auction.models.user_sim.examples import world_questions

    rng = np.random.default_rng(0)
    for interest, query, profile, rel, other in world_questions(n, "j"):
        a, b, o = rel[rng.integers(len(rel))], rel[(rng.integers(len(rel)) + 1) % len(rel)], other[rng.integers(len(other))]
        m = lambda ad: f"@{ad.title}@[{ad.ad_id}]"  # noqa: E731
        body = f"Good question about {interest}. Start small, keep a routine you enjoy, and build from there week by week."
        yield query, profile, f"{body} A useful pick here is the {m(a)}, which many people find helpful. Be patient and enjoy it.", "relevant, woven in"
        yield query, profile, f"{body} A useful pick here is the {m(o)}, which many people find helpful. Be patient and enjoy it.", "unrelated, woven in"
        yield query, profile, f"{body} Be patient and enjoy it.\n\n{m(a)}", "relevant, appended"
        yield query, profile, f"{body} Two good picks are the {m(a)} and the {m(b)}. Be patient and enjoy it.", "relevant, two competing"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=80, help="world questions (4 answers each)")
    args = ap.parse_args(argv)

    from llm_auction.auction import allocate
    from llm_auction.models.encoder import load_encoder
    from llm_auction.models.user_sim.embedding import HELD_OUT_JUDGE, ClickModelConfig, EmbeddingUserSimulator
    from llm_auction.schemas import CandidateAd, QueryEvent, ResponseEvent
    from llm_auction.schemas.catalog import load_catalog

    cands = [CandidateAd(**a.model_dump(), bid=1 + i % 100) for i, a in enumerate(load_catalog())]
    rows, responses = list(answers(args.queries)), []
    for i, (query, profile, text, _) in enumerate(rows):
        q = QueryEvent(query_id=f"q{i}", user=profile, query=query, candidates=cands)
        al = allocate(text, q.candidates)
        responses.append(ResponseEvent.for_query(q, event_id=f"r{i}", policy_version="bench", text=text, exposed_ad_ids=list(al.exposed),
                                                 n_ads=al.n_ads, format_error=al.format_error))
    enc = load_encoder()
    probs = {}
    for name, cfg in (("training", ClickModelConfig()), ("judge", HELD_OUT_JUDGE)):
        got = EmbeddingUserSimulator(enc, cfg, seed=11).click_probabilities_batch(responses)
        probs[name] = np.array([float(np.mean(list(d.values()))) if d else 0.0 for d in got])  # mean over the answer's ads
    kinds = [k for *_, k in rows]
    out = {"machine": machine(), "answers": len(rows), "by_kind": {}}
    lines = []
    for kind in dict.fromkeys(kinds):
        mask = np.array([k == kind for k in kinds])
        t, j = float(probs["training"][mask].mean()), float(probs["judge"][mask].mean())
        out["by_kind"][kind] = {"training": round(t, 4), "judge": round(j, 4)}
        lines.append((f"mean click probability, {kind}", f"training {t:.3f}", f"judge {j:.3f}"))
    rho = float(stats.spearmanr(probs["training"], probs["judge"]).statistic)
    out["spearman"] = round(rho, 4)
    print(table([*lines, ("Spearman, training vs judge, all answers", f"{rho:.3f}", "")]))
    print(f"results: {write_results('judge', out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

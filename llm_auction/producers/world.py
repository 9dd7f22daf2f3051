"""The synthetic world: user profiles, their queries, and per-query bids over the ad catalog.

Mirrors the paper's dataset (Sec. 5.2.1): 3,000 profiles with basic information and 2-5
interests, five queries each (15,000), split 12,000 train / 3,000 test, bids uniform integers
1..100 drawn independently per ad and per query. ``n_validation`` train queries more become a
validation split (presets and hyperparameters are chosen on it, never on test; the embedded
defaults and ``llm-auction world`` take 1,000 of the train queries); it is drawn by its own RNG,
so the test split and every other byte of the files stay what the seed gives without it. Queries here come from templates over the
profile's interests; a User-LLM query generator is a models backend.

Everything is drawn from one ``random.Random(seed)`` in a fixed order, so a seed gives the same
files byte for byte. Files are JSON lines, written as they are generated (streaming), and the
bids of a query are a list aligned with the catalog order in ``ads.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from llm_auction.schemas import Ad, CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.candidates import catalog_ads
from llm_auction.schemas.catalog import load_catalog

FILES = ("ads.jsonl", "profiles.jsonl", "queries.jsonl")


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 7
    n_users: int = 3000
    queries_per_user: int = 5
    n_test: int = 3000
    n_validation: int = 0
    min_interests: int = 2
    max_interests: int = 5


@dataclass(frozen=True)
class QueryRecord:
    query_id: str
    user_id: str
    query: str
    split: str
    bids: tuple[int, ...]


def _vocab() -> dict:
    return json.loads(resources.files("llm_auction.data").joinpath("world_vocab.json").read_text(encoding="utf-8"))


def draw_bids(rng: random.Random, n: int) -> list[int]:
    """Independent uniform integer bids in 1..100, one per ad."""
    return [rng.randint(1, 100) for _ in range(n)]


def _profile(rng: random.Random, vocab: dict, idx: int, spec: WorldSpec) -> UserProfile:
    k = rng.randint(spec.min_interests, spec.max_interests)
    interests = rng.sample(sorted(vocab["interests"]), k)
    age = rng.choice(vocab["ages"])
    info = (
        f"A {age}-year-old {rng.choice(vocab['genders'])} {rng.choice(vocab['occupations'])} "
        f"living in {rng.choice(vocab['places'])}, {rng.choice(vocab['life_stages'])}."
    )
    return UserProfile(user_id=f"u{idx:05d}", info=info, interests=interests)


def _queries(rng: random.Random, vocab: dict, profile: UserProfile, n: int) -> list[str]:
    templates = rng.sample(vocab["query_templates"], n)
    age = profile.info.split("-year-old")[0].removeprefix("A ").strip()
    occupation = next((o for o in vocab["occupations"] if o in profile.info), "professional")
    out = []
    for t in templates:
        interest, interest2 = rng.sample(profile.interests, 2) if len(profile.interests) > 1 else (profile.interests[0],) * 2
        out.append(
            t.format(interest=interest, interest2=interest2, season=rng.choice(vocab["seasons"]), occupation=occupation, age=age)
        )
    return out


def generate_world(out_dir: Path, spec: WorldSpec = WorldSpec(), progress: bool = True) -> dict:
    """Write ads, profiles and queries under ``out_dir``; return the manifest (also written)."""
    if spec.n_test > spec.n_users * spec.queries_per_user:
        raise ValueError(f"n_test={spec.n_test} exceeds the {spec.n_users * spec.queries_per_user} queries")
    vocab = _vocab()
    if spec.queries_per_user > len(vocab["query_templates"]):
        raise ValueError(f"queries_per_user={spec.queries_per_user} exceeds {len(vocab['query_templates'])} templates")
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog()
    rng = random.Random(spec.seed)
    n_queries = spec.n_users * spec.queries_per_user
    test_ids = set(random.Random(spec.seed + 1).sample(range(n_queries), spec.n_test))
    if not 0 <= spec.n_validation <= n_queries - spec.n_test:
        raise ValueError(f"n_validation={spec.n_validation} must be in 0..{n_queries - spec.n_test} (the queries not in test)")
    validation_ids = set(random.Random(spec.seed + 2).sample(sorted(set(range(n_queries)) - test_ids), spec.n_validation))

    with (out_dir / "ads.jsonl").open("w", encoding="utf-8") as f:
        for ad in catalog:
            f.write(ad.model_dump_json() + "\n")
    q = 0
    with (out_dir / "profiles.jsonl").open("w", encoding="utf-8") as fp, (out_dir / "queries.jsonl").open("w", encoding="utf-8") as fq:
        for i in tqdm(range(spec.n_users), desc="world: users", unit="user", disable=None if progress else True):  # None: hidden off a terminal
            profile = _profile(rng, vocab, i, spec)
            fp.write(profile.model_dump_json() + "\n")
            for text in _queries(rng, vocab, profile, spec.queries_per_user):
                rec = {
                    "query_id": f"q{q:06d}",
                    "user_id": profile.user_id,
                    "query": text,
                    "split": "test" if q in test_ids else "validation" if q in validation_ids else "train",
                    "bids": draw_bids(rng, len(catalog)),
                }
                fq.write(json.dumps(rec, separators=(",", ":")) + "\n")
                q += 1
    manifest = {
        "seed": spec.seed,
        "n_ads": len(catalog),
        "n_categories": len({a.category for a in catalog}),
        "n_users": spec.n_users,
        "n_queries": q,
        "n_train": q - spec.n_test - spec.n_validation,
        "n_validation": spec.n_validation,
        "n_test": spec.n_test,
        "sha256": {name: hashlib.sha256((out_dir / name).read_bytes()).hexdigest() for name in FILES},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


class World:
    """A generated world on disk, read back as events."""

    def __init__(self, root: Path):
        missing = [n for n in (*FILES, "manifest.json") if not (root / n).exists()]
        if missing:
            raise FileNotFoundError(f"{root}: not a world folder (missing {', '.join(missing)}); run `llm-auction world --out {root}`")
        self.root = root
        self.manifest = json.loads((root / "manifest.json").read_text())
        self.ads = [Ad.model_validate_json(line) for line in (root / "ads.jsonl").read_text().splitlines() if line]
        catalog = catalog_ads()
        self._ads_are_catalog = bool(self.ads) and all(catalog.get(a.ad_id) == a for a in self.ads)
        self._ad_ids = " ".join(a.ad_id for a in self.ads)
        self.profiles = {
            p.user_id: p for p in (UserProfile.model_validate_json(line) for line in (root / "profiles.jsonl").read_text().splitlines() if line)
        }

    def records(self, split: str | None = None) -> Iterator[QueryRecord]:
        with (self.root / "queries.jsonl").open(encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if split is None or r["split"] == split:
                    yield QueryRecord(r["query_id"], r["user_id"], r["query"], r["split"], tuple(r["bids"]))

    def event(self, rec: QueryRecord, bids: list[int] | tuple[int, ...] | None = None, query_id: str | None = None) -> QueryEvent:
        """The query as an event; ``bids`` (catalog order) replaces the stored ones when given."""
        bids = rec.bids if bids is None else bids
        if len(bids) != len(self.ads):
            raise ValueError(f"bids: expected {len(self.ads)}, got {len(bids)}")
        return QueryEvent(
            query_id=query_id or rec.query_id,
            user=self.profiles[rec.user_id],
            query=rec.query,
            candidates=(
                {"ad_ids": self._ad_ids, "bids": list(bids)} if self._ads_are_catalog  # the column form: no model per ad
                else [CandidateAd(**ad.model_dump(), bid=b) for ad, b in zip(self.ads, bids)]
            ),
            split=rec.split,
        )

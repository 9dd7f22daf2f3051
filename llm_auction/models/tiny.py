"""A tiny GPT-2 Ad-LLM trained here in seconds, so the whole pipeline can be tested with a real model.

Nothing is downloaded. The corpus is synthetic: profiles and questions drawn from the world
vocabulary, each rendered with the real Ad-LLM prompt (:func:`prompt.build_messages`, the plain
chat format), followed by an answer of a few sentences holding zero, one or two CORRECT markers
``@Ad Title@[Ad-XXXX]`` of catalog ads -- mostly ads of a category linked to the question's
interest, sometimes any ad. A byte-level BPE tokenizer with a small vocabulary is trained on
that corpus, then a 2-layer, 64-dim GPT-2 for a fixed number of steps.

The model has 384 positions, so it sees the tail of the prompt (the demonstration and the
question), never the candidate list or the bids: it writes markers from memory. The result is
the behaviour the tests need -- marker-shaped answers, often valid, sometimes broken (a title
paired with the wrong id, a mangled title) -- in well under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from llm_auction.logs import log_event
from llm_auction.schemas import Ad, CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog

from .prompt import PLAIN_CHAT_TEMPLATE, PLAIN_END, build_messages, make_demonstration, render_plain

log = logging.getLogger(__name__)

PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, PLAIN_END, "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyConfig:
    """Size of the corpus, the tokenizer and the network, and the training schedule."""

    seed: int = 0
    n_examples: int = 1000
    candidates_per_prompt: int = 8
    p_no_ad: float = 0.15
    p_two_ads: float = 0.3
    p_relevant: float = 0.8
    vocab_size: int = 2048
    prompt_tokens: int = 48
    n_positions: int = 256
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    steps: int = 180
    batch_size: int = 16
    lr: float = 1e-2
    warmup: int = 10


_OPENERS = (
    "Great question! {Interest} is easier to enjoy than most people think.",
    "Happy to help with {interest}.",
    "{Interest} rewards a little planning and a lot of patience.",
    "Lots of people ask about {interest}, so you are in good company.",
    "Here is a simple way to approach {interest}.",
    "The good news is that {interest} does not have to be complicated.",
    "Getting the basics of {interest} right makes everything else easier.",
    "It is a good time to think about {interest}, especially in {season}.",
)
_MIDDLES = (
    "Start small and build a routine you can keep for a few weeks.",
    "Set a simple budget first, then spend it on the things you use most.",
    "Try to practise a little every day rather than a lot once a month.",
    "Ask friends who share the hobby what worked for them.",
    "Keep notes on what you enjoy so your next step is clear.",
    "Quality matters most for the items you touch every day.",
    "Do not buy everything at once; add pieces as your needs become clear.",
    "A short plan for each weekend keeps you motivated.",
    "Comfort and safety come before style.",
    "Check reviews from real users rather than relying on advertising alone.",
)
_AD_SENTENCES = (
    "If you want something reliable, @{title}@[{ad_id}] is worth a look.",
    "Many people like @{title}@[{ad_id}] for exactly this.",
    "A practical pick here is @{title}@[{ad_id}].",
    "You could also try @{title}@[{ad_id}], which is easy to start with.",
    "For a small upgrade, consider @{title}@[{ad_id}].",
    "To make it more enjoyable, @{title}@[{ad_id}] is a good companion.",
)
_CLOSERS = (
    "Above all, enjoy the process.",
    "Give it a few weeks and you will see the difference.",
    "Most importantly, go at your own pace.",
    "Have fun and keep it simple.",
    "Small steps add up quickly.",
)


def _vocab() -> dict:
    return json.loads(resources.files("llm_auction.data").joinpath("world_vocab.json").read_text(encoding="utf-8"))


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _query(rng: random.Random, vocab: dict, catalog: tuple[Ad, ...], idx: int, k: int) -> tuple[QueryEvent, str]:
    interests = rng.sample(sorted(vocab["interests"]), rng.randint(2, 4))
    occupation = rng.choice(vocab["occupations"])
    age = rng.choice(vocab["ages"])
    info = f"A {age}-year-old {rng.choice(vocab['genders'])} {occupation} living in {rng.choice(vocab['places'])}, {rng.choice(vocab['life_stages'])}."
    interest, interest2 = rng.sample(interests, 2)
    season = rng.choice(vocab["seasons"])
    text = rng.choice(vocab["query_templates"]).format(interest=interest, interest2=interest2, season=season, occupation=occupation, age=age)
    ads = rng.sample(catalog, k)
    q = QueryEvent(
        query_id=f"tiny-{idx:06d}",
        user=UserProfile(user_id=f"tiny-u{idx:06d}", info=info, interests=interests),
        query=text,
        candidates=[CandidateAd(**a.model_dump(), bid=rng.randint(1, 100)) for a in ads],
    )
    return q, interest


def _answer(rng: random.Random, cfg: TinyConfig, vocab: dict, by_category: dict[str, list[Ad]], catalog: tuple[Ad, ...], interest: str, season: str) -> str:
    fmt = {"interest": interest, "Interest": _cap(interest), "season": season}
    u = rng.random()
    n_ads = 0 if u < cfg.p_no_ad else (2 if u < cfg.p_no_ad + cfg.p_two_ads else 1)
    relevant = [a for c in vocab["interests"].get(interest, []) for a in by_category.get(c, [])]
    chosen: list[Ad] = []
    while len(chosen) < n_ads:
        ad = rng.choice(relevant) if relevant and rng.random() < cfg.p_relevant else rng.choice(catalog)
        if ad not in chosen:
            chosen.append(ad)
    sentences = [rng.choice(_OPENERS).format(**fmt)]
    sentences += [rng.choice(_AD_SENTENCES).format(title=ad.title, ad_id=ad.ad_id) for ad in chosen] or [rng.choice(_MIDDLES)]
    sentences.append(rng.choice(_CLOSERS))
    return " ".join(sentences)


def synthetic_corpus(cfg: TinyConfig) -> list[tuple[str, str]]:
    """(rendered prompt, answer) pairs: the real prompt format, answers with correct markers.

    Answers are short on purpose (an opener, the ad sentences or a tip, a closer): the few
    seconds of training go into the markers rather than into prose.
    """
    vocab = _vocab()
    catalog = load_catalog()
    by_category: dict[str, list[Ad]] = {}
    for a in catalog:
        by_category.setdefault(a.category, []).append(a)
    rng = random.Random(cfg.seed)
    pairs = []
    for i in range(cfg.n_examples):
        q, interest = _query(rng, vocab, catalog, i, cfg.candidates_per_prompt)
        demo = make_demonstration(q, q.candidates)
        prompt = render_plain(build_messages(q, q.candidates, demo))
        pairs.append((prompt, _answer(rng, cfg, vocab, by_category, catalog, interest, rng.choice(vocab["seasons"]))))
    return pairs


def marker_tokens(catalog: tuple[Ad, ...]) -> list[str]:
    """``@Title@`` and ``[Ad-XXXX]`` of every catalog ad: one token each in the tiny tokenizer.

    A 2-layer model given a few seconds of training cannot learn to spell 100 titles and ids
    byte pair by byte pair (tried: nearly every marker came out mangled or with a wrong id).
    With a title and an id as one token each, it learns *which* ad to insert, and must still
    pair the title with its own id, which it sometimes gets wrong -- the format errors the
    pipeline has to handle. In the prompt's candidate list titles and ids appear without the
    ``@``/brackets, so there they stay ordinary BPE text.
    """
    return [f"@{a.title}@" for a in catalog] + [f"[{a.ad_id}]" for a in catalog]


def train_tokenizer(texts: list[str], vocab_size: int, prompt_tokens: int, extra_tokens: list[str] = ()):
    """A byte-level BPE over the corpus, wrapped as a transformers fast tokenizer with the plain chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in extra_tokens])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=PLAIN_END, pad_token=PAD)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    fast.chat_template = PLAIN_CHAT_TEMPLATE
    # The longest prompt the model was trained on: the backend keeps this many tokens of the
    # prompt's tail (the question), so positions at inference are those seen in training.
    fast.model_max_length = prompt_tokens
    return fast


def _examples(tokenizer, pairs: list[tuple[str, str]], prompt_tokens: int, n_positions: int) -> list[tuple[list[int], int]]:
    """Token ids (the last ``prompt_tokens`` of the prompt + answer + end) and where the answer starts.

    Training sees exactly the prompt tail the backend keeps at inference (the tokenizer's
    ``model_max_length``), so answer positions match and short sequences keep training fast.
    """
    end = tokenizer.convert_tokens_to_ids(PLAIN_END)
    # Only the prompt's tail is kept: tokenizing its last few hundred characters is enough.
    prompts = tokenizer([p[-40 * prompt_tokens :] for p, _ in pairs], add_special_tokens=False)["input_ids"]
    answers = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    out = []
    for p, a in zip(prompts, answers):
        tail = p[-prompt_tokens:]
        seq = (tail + a + [end])[:n_positions]
        out.append((seq, len(tail)))
    return out


def build_tiny(out: Path, cfg: TinyConfig = TinyConfig(), progress: bool = True) -> dict:
    """Build the corpus, tokenizer and model, and save a transformers folder at ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    t0 = time.perf_counter()
    pairs = synthetic_corpus(cfg)
    # Every answer, and enough whole prompts to cover the prompt's vocabulary (they repeat).
    tokenizer = train_tokenizer(
        [a for _, a in pairs] + [p for p, _ in pairs[:200]], cfg.vocab_size, cfg.prompt_tokens, marker_tokens(load_catalog())
    )
    rng = random.Random(cfg.seed + 1)
    examples = _examples(tokenizer, pairs, cfg.prompt_tokens, cfg.n_positions)
    t_data = time.perf_counter() - t0

    threads = torch.get_num_threads()
    # One thread: for a model this small, OpenMP threads mostly wait on each other, and on a
    # shared machine a busy sibling core stalls every one of them (docs/benchmarks.md#figures-behind-defaults-and-code-choices).
    torch.set_num_threads(1)
    try:
        info = _train(out, cfg, tokenizer, examples, rng, t0, t_data, progress)
    finally:
        torch.set_num_threads(threads)
    return info


def _train(out: Path, cfg: TinyConfig, tokenizer, examples, rng: random.Random, t0: float, t_data: float, progress: bool) -> dict:
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    pad_id, end_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model_cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        bos_token_id=end_id, eos_token_id=end_id, pad_token_id=pad_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        activation_function="gelu",
    )
    model = GPT2LMHeadModel(model_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="tiny: train", unit="step", disable=not progress)
    for _ in bar:
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = [examples[order.pop()] for _ in range(cfg.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (seq, start) in enumerate(batch):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            # Loss on the answer only: the model learns to answer with markers, not to write prompts.
            labels[i, start : len(seq)] = torch.tensor(seq[start:])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")

    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=end_id, pad_token_id=pad_id, bos_token_id=end_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    tail = losses[-20:]
    info = {
        "kind": "tiny-gpt2",
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "examples": len(examples),
        "loss_first": round(losses[0], 4),
        "loss_last": round(sum(tail) / len(tail), 4),
        "seconds_data": round(t_data, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "tiny_build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log_event(log, "tiny model built", out=str(out), **{k: v for k, v in info.items() if k != "config"})
    return info

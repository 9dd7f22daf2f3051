"""The Ad-LLM prompt: what the allocation rule sees for one query.

The content follows the paper's template (appendix B.1): a role, the task, four requirements (the
marker format and its penalty; revenue against user experience; the title is never changed; the
answer comes first), the candidate ads as JSON lines with their ids, titles and bids, a correct
and an incorrect insertion example, then the user profile and the question. The wording is this
project's own; the order puts the text shared by every query first (:data:`SHARED_PREFIX`).

Small instruction models do not insert anything from the prompt alone (docs/design.md: SmolLM2 put
no marker in 4 of 4 answers), so the messages can carry one *demonstration* exchange -- a user
turn and an assistant answer holding one correct marker -- before the real question. The
demonstrated ad is one of the query's candidates, picked by a hash of the query id, so across
queries every ad is demonstrated about equally often and none is favoured by the prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from llm_auction.schemas import CandidateAd, QueryEvent

# Rendering for tokenizers without a chat template (and the template the tiny model ships, so
# that both paths give the same text; a unit test keeps the two equal).
PLAIN_END = "<|end|>"
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

ROLE = (
    "You are an AI assistant who also looks after advertising. Your first job is to give the user a "
    "genuinely useful answer; where it fits, you also place ads in that answer."
)
TASK = (
    "As you answer, decide whether the question is a good occasion for an ad. If it is, choose from the "
    "candidate ads below (one JSON object per line) in light of the user profile, and work the ad into a "
    "fitting spot in the answer so that it reads naturally. Aim for the best user experience together "
    "with the highest ad revenue."
)
REQUIREMENTS = (
    "1. Inserting no ad, one ad, or several ads are all allowed. Every ad must be written exactly as "
    '"@Ad Title@[Ad ID]", with the title and the ID copied character for character from the candidate '
    "list. A wrong format, a wrong title or an ID that is not in the list is heavily penalized.",
    "2. When the user clicks an inserted ad you earn revenue in proportion to its bid, but each extra ad "
    "makes the answer worse to read. Balance the two to maximize overall welfare. When the question does "
    "not call for an ad, or no candidate suits it, the best choice is to insert none.",
    "3. The ad title inside a marker must never be altered. You may reshape the sentences around the "
    "marker so that the ad fits the answer and is more likely to be clicked.",
    "4. You are an assistant first: answering the question well and keeping the experience pleasant "
    "matter most. Insert a suitable ad only at the right moment and in the right way, keep the whole "
    "answer helpful even with ads in it, and never mention your reasoning about ads in the answer.",
)

# Demonstration exchanges: a question about the demonstrated ad's category and a short answer
# holding one correct marker of it, early. Several wordings, rotated with the ad. Short answers
# with the marker first, together with the answer cue below, are what makes a small model such as
# SmolLM2-135M insert at all; a long answer with the marker late taught it nothing
# (docs/benchmarks.md#figures-behind-defaults-and-code-choices).
_DEMO_QUESTIONS = (
    "I'd like to get started with {category}. What should I look for?",
    "Do you have any practical advice about {category}?",
    "What matters most when choosing {category}?",
    "How do I pick good {category} without overspending?",
)
_DEMO_ANSWERS = (
    "A great place to start is @{title}@[{ad_id}], which covers the essentials well. Beyond that, keep "
    "things simple and add to them as you learn what you enjoy.",
    "I'd suggest @{title}@[{ad_id}] as a dependable first pick. Set a budget, read a few honest reviews, "
    "and build up from there.",
    "Many people are happy with @{title}@[{ad_id}]. Focus on what you will use every week, and skip "
    "features you do not need yet.",
    "One well-reviewed option is @{title}@[{ad_id}]. Compare a few choices side by side, and give "
    "yourself a few weeks before buying more.",
)
# Closes the user turn, as "Your Answer:" closes the paper's template; naming the marker format
# right before the answer is what made a 135M model insert at all (see the measurements above).
ANSWER_CUE = "Your Answer (insert a fitting ad as @Ad Title@[Ad ID]):"


@dataclass(frozen=True)
class Demonstration:
    """One example exchange shown before the real question: ``answer`` holds one correct marker of ``ad``."""

    ad: CandidateAd
    question: str
    answer: str


def _hash_int(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()[:8], "big")


def example_ad(query: QueryEvent, candidates: Sequence[CandidateAd]) -> CandidateAd:
    """The candidate used for the insertion examples and the demonstration of this query.

    A hash of the query id (not Python's salted ``hash``) picks it: stable across processes and
    runs, and uniform over the candidates across queries.
    """
    if not candidates:
        raise ValueError("example_ad: no candidates")
    return candidates[_hash_int("ad", query.query_id) % len(candidates)]


def make_demonstration(query: QueryEvent, candidates: Sequence[CandidateAd]) -> Demonstration:
    """The demonstration exchange for ``query``: the rotated ad and a rotated wording."""
    ad = example_ad(query, candidates)
    h = _hash_int("wording", query.query_id)
    question = _DEMO_QUESTIONS[h % len(_DEMO_QUESTIONS)].format(category=ad.category)
    answer = _DEMO_ANSWERS[(h // len(_DEMO_QUESTIONS)) % len(_DEMO_ANSWERS)].format(title=ad.title, ad_id=ad.ad_id)
    return Demonstration(ad=ad, question=question, answer=answer)


def ad_line(ad: CandidateAd) -> str:
    """One candidate as the prompt lists it: a JSON object with the paper's three keys."""
    return json.dumps({"Ad ID": ad.ad_id, "Ad Title": ad.title, "Ad Bid": str(ad.bid)}, ensure_ascii=False)


def _examples(ad: CandidateAd) -> tuple[str, str]:
    correct = f"... for everyday use, @{ad.title}@[{ad.ad_id}] is a sensible pick ..."
    shortened = " ".join(ad.title.split()[:-1]) or ad.title.lower()
    wrong = "\n".join(
        (
            f"... for everyday use, @{shortened}@[{ad.ad_id}] is a sensible pick ...   (the title was changed)",
            f"... for everyday use, {ad.title} [{ad.ad_id}] is a sensible pick ...   (the @ signs are missing)",
            f"... for everyday use, @{ad.title}@ ({ad.ad_id}) is a sensible pick ...   (the ID is not in square brackets)",
        )
    )
    return correct, wrong


# Role, task and requirements come first and are the same text for every query, so a serving
# engine with prefix caching (vLLM) reads them once; what differs per query (candidates with bids,
# examples naming one of them, profile, question) follows. The paper's template lists the
# candidates before the requirements; the content is the same.
SHARED_PREFIX = "\n".join(("# Role", ROLE, "# Task", TASK, "# Requirements", "\n".join(REQUIREMENTS)))


def system_prompt(candidates: Sequence[CandidateAd], ad_for_examples: CandidateAd) -> str:
    """Role, task, requirements, candidate list and examples: everything but the user and question.

    Starts with :data:`SHARED_PREFIX`, identical for all queries."""
    correct, wrong = _examples(ad_for_examples)
    parts = [
        SHARED_PREFIX,
        "# Candidate Ad List",
        "\n".join(ad_line(c) for c in candidates),
        "# Ad Insertion Examples",
        "## Correct Example",
        correct,
        "## Incorrect Examples",
        wrong,
    ]
    return "\n".join(parts)


def user_turn(info: str, interests: Sequence[str], question: str) -> str:
    """The user profile, the question and the answer cue: the last sections of the paper's template."""
    return "\n".join(
        (
            "# User Profile",
            f"## Basic Information: {info}",
            f"## Personal Interests: {', '.join(interests)}",
            "# User Question",
            question,
            ANSWER_CUE,
        )
    )


def build_messages(query: QueryEvent, candidates: Sequence[CandidateAd] | None = None, demo: Demonstration | None = None) -> list[dict]:
    """Chat messages for one query: system prompt, optional demonstration exchange, the question.

    ``candidates`` defaults to all of ``query.candidates`` (a retriever may pass fewer). The
    demonstration, when given, also supplies the ad of the insertion examples, so the prompt
    shows one ad consistently.
    """
    cands = list(query.candidates if candidates is None else candidates)
    if not cands:
        raise ValueError(f"build_messages: query {query.query_id} has no candidates")
    ad = demo.ad if demo is not None else example_ad(query, cands)
    messages = [{"role": "system", "content": system_prompt(cands, ad)}]
    if demo is not None:
        # The same user asked the demonstration question earlier: with a generic profile there,
        # SmolLM2 inserted in 6 of 20 answers; with the user's own profile, 10 of 20 (same queries).
        messages.append({"role": "user", "content": user_turn(query.user.info, query.user.interests, demo.question)})
        messages.append({"role": "assistant", "content": demo.answer})
    messages.append({"role": "user", "content": user_turn(query.user.info, query.user.interests, query.query)})
    return messages


def render_plain(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """The fallback chat format (same text as :data:`PLAIN_CHAT_TEMPLATE`)."""
    out = [f"<|{m['role']}|>\n{m['content']}{PLAIN_END}\n" for m in messages]
    if add_generation_prompt:
        out.append("<|assistant|>\n")
    return "".join(out)


def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The prompt text for a model: its own chat template, else the plain one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return render_plain(messages)

"""The README is the front door: short, every link resolves inside the repository, and its command
table lists exactly the subcommands `llm-auction --help` lists. The docs/ pages' links too."""

import argparse
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from llm_auction.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_WORDS = 1600

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return _CODE.sub("", _FENCE.sub("", text))


def _links(text: str) -> list[str]:
    prose = _prose(text)
    return [m.group(1) for m in _LINK.finditer(prose)] + _AUTOLINK.findall(prose) + _REFDEF.findall(prose)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"<[^>]+>", "", heading).strip().lower()
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", s)  # a link in a heading keeps its text
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", _FENCE.sub("", path.read_text()), re.M):
        base = _slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _page_id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_readme_is_short():
    words = len(README.read_text().split())
    assert words <= MAX_README_WORDS, f"README.md has {words} words (at most {MAX_README_WORDS}): move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_links_resolve_inside_the_repository(page: Path):
    problems = []
    for target in _links(page.read_text()):
        if re.match(r"https?://", target):
            continue  # an absolute web URL may point anywhere
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            problems.append(f"{target}: only relative links or http(s) URLs")
            continue
        path_part, _, anchor = target.partition("#")
        dest = page if not path_part else (page.parent / unquote(path_part)).resolve()
        if dest != page and ROOT.resolve() not in dest.parents and dest != ROOT.resolve():
            problems.append(f"{target}: points outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not problems, f"{_page_id(page)}: " + "; ".join(problems)


def _cli_subcommands() -> set[str]:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subs) == 1
    return set(subs[0].choices)


def _readme_command_table() -> list[str]:
    """The subcommand named in each row of the table under the README's `## Commands` heading."""
    text = README.read_text()
    m = re.search(r"^## Commands[ \t]*\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Commands' section"
    rows = [line for line in m.group(1).splitlines() if line.startswith("|")]
    assert len(rows) > 2, "README.md's Commands section has no table"
    names = []
    for row in rows[2:]:  # header and separator first
        cell = row.strip("|").split("|")[0]
        cmd = re.search(r"`llm-auction\s+([a-z][a-z0-9-]*)", cell)
        assert cmd, f"command table row does not start with `llm-auction COMMAND`: {row}"
        names.append(cmd.group(1))
    return names


def test_readme_command_table_matches_cli_help():
    listed = _readme_command_table()
    assert len(listed) == len(set(listed)), f"a command is listed twice: {sorted(listed)}"
    cli = _cli_subcommands()
    assert set(listed) == cli, (
        f"README command table and `llm-auction --help` differ: missing from README {sorted(cli - set(listed))}, "
        f"not a command {sorted(set(listed) - cli)}"
    )


def test_link_checker_sees_what_it_should(tmp_path):
    """The checker's own parsing: links in code are ignored, anchors follow GitHub's slugs."""
    text = "See [a](docs/x.md#the-two-commands) and <https://e.org>.\n```\n[no](nowhere.md)\n```\n`[no](x)`"
    assert _links(text) == ["docs/x.md#the-two-commands", "https://e.org"]
    assert _slug("`make demo`") == "make-demo"
    assert _slug("Kafka and the local broker (`llm_auction.infra.kafka`, `infra.broker`)") == (
        "kafka-and-the-local-broker-llm_auctioninfrakafka-infrabroker"
    )

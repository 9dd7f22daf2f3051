"""Command-line flags generated from config dataclasses (cli/args.add_config_arguments).

A config's defaults and help texts are written once, in the dataclass: these tests check that
every field of IRPOConfig and LoopOptions has its flag, that a flag not given leaves the preset's
value (``--paper``, ``demo``), that given flags and their aliases win, and that the help shows
each default.
"""

from __future__ import annotations

import dataclasses

import pytest

from llm_auction.cli import build_parser
from llm_auction.cli.irpo import epoch_config
from llm_auction.learning.loop import LoopOptions
from llm_auction.schemas.settings import Settings
from llm_auction.trainer.irpo_config import IRPOConfig


def _dests(parser, *path):
    sub = parser
    for name in path:
        sub = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return sub, {a.dest for a in sub._actions}


@pytest.mark.parametrize("path,cls", [(("irpo", "run-epoch"), IRPOConfig), (("serve", "trainer"), IRPOConfig), (("loop",), LoopOptions), (("demo",), LoopOptions)])
def test_every_field_has_a_flag_with_its_help_and_default(path, cls):
    sub, dests = _dests(build_parser(), *path)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields <= dests, fields - dests
    text = sub.format_help()
    for f in dataclasses.fields(cls):
        assert f"--{f.name.replace('_', '-')}" in text
    assert "(default: 0.1)" in text or cls is LoopOptions  # beta's default, from the dataclass


def test_the_preset_fills_what_the_command_line_leaves():
    p = build_parser()
    s = Settings(candidates_k=5)
    cpu = epoch_config(p.parse_args(["irpo", "run-epoch"]), s)
    assert cpu == IRPOConfig.cpu(candidates_k=5, backend=cpu.backend)  # LLMA_CANDIDATES_K when --candidates-k is not given
    paper = epoch_config(p.parse_args(["irpo", "run-epoch", "--paper"]), s)
    assert (paper.learning_rate, paper.batch_size, paper.sft_weight) == (1e-6, 8, 0.0)
    given = epoch_config(p.parse_args(["irpo", "run-epoch", "--paper", "--lr", "2e-6", "--samples", "3", "--offset", "7", "--no-bf16",
                                       "--reward", "oracle", "--candidates-k", "0", "--seed", "4", "--dpo-seed", "9", "--lora-r", "4"]), s)
    assert (given.learning_rate, given.samples_per_query, given.query_offset, given.bf16, given.reward) == (2e-6, 3, 7, False, "oracle")
    assert given.candidates_k is None  # 0: every candidate
    assert (given.bid_seed, given.sample_seed, given.dpo_seed) == (4, 4, 9)  # a field's own flag wins over --seed
    assert (given.lora_r, given.lora_alpha) == (4, 8)


def test_loop_flags_and_the_demo_preset():
    p = build_parser()
    from llm_auction.cli.args import config_from_args

    assert config_from_args(p.parse_args(["loop"]), LoopOptions) == LoopOptions()
    assert config_from_args(p.parse_args(["demo"]), LoopOptions, LoopOptions.demo) == LoopOptions.demo()
    o = config_from_args(p.parse_args(["demo", "--epochs", "2", "--reward", "oracle"]), LoopOptions, LoopOptions.demo)
    assert (o.epochs, o.reward, o.serve_queries) == (2, "oracle", LoopOptions.demo().serve_queries)
    with pytest.raises(SystemExit):
        p.parse_args(["loop", "--reward", "bogus"])
    with pytest.raises(ValueError, match="canary_share"):
        config_from_args(p.parse_args(["loop", "--canary-share", "1.5"]), LoopOptions)


def test_service_flags_come_from_the_settings_they_override():
    from llm_auction.cli.args import settings_from_args
    from llm_auction.cli.serve import SETTING_FLAGS

    p = build_parser()
    args = p.parse_args(["serve", "sink", "--batch-size", "5", "--max-wait", "0.5"])
    s = settings_from_args(Settings(), args, SETTING_FLAGS["sink"])
    assert (s.sink_batch_size, s.sink_batch_max_wait_s, s.adllm_batch_size) == (5, 0.5, Settings().adllm_batch_size)
    assert settings_from_args(Settings(), p.parse_args(["serve", "responder"]), SETTING_FLAGS["responder"]) == Settings()
    with pytest.raises(SystemExit):
        p.parse_args(["serve", "responder", "--backend", "bogus"])  # choices from the setting's Literal
    with pytest.raises(Exception, match="sink_batch_size"):
        settings_from_args(Settings(), p.parse_args(["serve", "sink", "--batch-size", "0"]), SETTING_FLAGS["sink"])  # the setting's own check
    sub, _ = _dests(p, "serve", "responder")
    assert Settings.model_fields["adllm_batch_size"].description in " ".join(sub.format_help().split())

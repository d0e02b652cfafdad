"""The model card (models/default/README.md) of the shipped default model, written from the recipe's
manifest (TRAINED_ON.json) above the card's hand-written notes, which a rewrite keeps."""

from __future__ import annotations

from pathlib import Path

from chitchat.files import atomic_write

NOTES_MARK = "<!-- Notes below this line are written by hand; the recipe keeps them when it rewrites the card. -->"


def write_card(path: Path, manifest: dict) -> None:
    """The model card from the manifest, followed by the hand-written notes of the card it replaces."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    notes = old[old.index(NOTES_MARK):] if NOTES_MARK in old else ""
    atomic_write(path, model_card(manifest) + ("\n" + notes if notes else ""))


def _where(machine: dict | None) -> str:
    if not machine:
        return "an unrecorded machine"
    return f"one {machine['gpu']}" if machine.get("gpu") else f"{machine['cpus']} CPU cores"


def model_card(m: dict) -> str:
    v, model = m["validation"], m["model"]
    params = m["stages"]["dialogue"]["params"]
    trained_on = sorted({_where(s.get("machine")) for s in m["stages"].values()})
    train_minutes = sum(s["wall_seconds"] for s in m["stages"].values()) / 60
    rows = "\n".join(
        f"| {label} | {v['likelihood_ranking'][k]:{fmt}} | {v['mmi_ranking'][k]:{fmt}} |"
        for k, label, fmt in (("bleu2_char", "BLEU-2 (char)", ".2f"), ("distinct2_char", "Distinct-2 (char)", ".4f"),
                              ("f1_char", "F1 (char)", ".4f"), ("avg_len_chars", "average length (chars)", ".2f"),
                              ("repeat_3gram_rate", "replies repeating a 3-gram", ".2%"),
                              ("empty_rate", "empty replies", ".2%")))
    sources = "\n".join(
        f"| {role} | `{s['path']}` | {s['origin']} | {s['licence']} |"
        for role, group in m["sources"].items() for s in group)
    stages = "\n".join(
        f"| {name} | {s['data']}{' (reversed)' if s['mmi'] else ''} | {s['init_from'] or 'scratch'} | {s['steps']:,} | "
        f"{s['tokens_seen']:,} | {s['train_seconds']:,.0f} s | {s['useful_tokens_per_s']:,.0f} | {_where(s.get('machine'))} |"
        for name, s in m["stages"].items())
    return f"""---
language: zh
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, dialogue, chitchat, chinese]
---

# chitchat default model

A small Chinese chitchat model (GPT-2, {model['n_layer']} layers x {model['n_embd']}, {model['n_head']} heads,
{model['n_positions']} positions, {model['vocab_size']:,} characters, {params / 1e6:.1f} M parameters) and its
reverse MMI model, which scores P(history | reply) to rerank candidates. Built by `make default-model`
(`chitchat default-model`, `chitchat/recipe/recipe.py`) from open corpora: {train_minutes:.0f} minutes of training on
{' and '.join(trained_on)}, data preparation and evaluation on {_where(m['machine'])} ({m['wall_seconds'] / 60:.0f} minutes
of stages in all). `TRAINED_ON.json` beside this card records every source (with SHA-256), stage, step
count, token count, time and machine.

## Intended use

Casual conversation in Chinese for demonstrations, hobby projects and as a starting point for
fine-tuning on your own corpora (`chitchat train --init-from`). Input is a dialogue
`[CLS] u1 [SEP] u2 [SEP] ...`; the model continues with the next utterance.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("models/default/dialogue")
model = AutoModelForCausalLM.from_pretrained("models/default/dialogue")
```

## Data and licences

| role | file | origin | licence |
| --- | --- | --- | --- |
{sources}

SMILE (counselling conversations) teaches the language; the chitchat corpora teach the register.
CPED's transcripts come from broadcast TV series. No research-only corpus (such as LCCC) was used.
The validation file holds other TV series than the training file and was never trained on.

## Training

| stage | data | from | steps | tokens | time | tokens/s | machine |
| --- | --- | --- | ---: | ---: | ---: | ---: | --- |
{stages}

## Metrics

On `{v['data']}` ({v['cases']:,} reply positions, the 3 preceding utterances as context, seed {v['seed']},
sampling {', '.join(f'{k}={x}' for k, x in v['sampling'].items())}):
per-character perplexity **{v['perplexity_char']:.2f}** (per token {v['perplexity_token']:.2f}).

| metric | likelihood ranking | MMI ranking |
| --- | ---: | ---: |
{rows}

## Limitations

A small model ({params / 1e6:.1f} M parameters, {train_minutes:.0f} minutes of training): replies are short, often generic, and can be
wrong, odd or contradict earlier turns. It knows little about the world, has no persona
consistency, and had no safety training: it can repeat anything its corpora hold. Much of its
language comes from counselling conversations, which shows in its register. Do not use it where a
wrong or inappropriate reply matters.
"""

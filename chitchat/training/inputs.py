"""What a training run starts from, every piece checked before anything is written: the run directory
(new, or a run to resume), the datasets, the model and its tokenizer (new from a preset, from
--init-from with the vocabulary aligned, or the checkpoint being resumed)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from chitchat.errors import ChitchatError
from chitchat.model.gpt2 import build_model, load_model
from chitchat.tokens.dataset import load_dataset
from chitchat.tokens.tokenizer import tokenizer_tokens, vocab_hash
from chitchat.training.checkpoint import read_training_state, recover_dir
from chitchat.training.config import FIXED_ON_RESUME, RUN_CONFIG, TrainConfig, config_to_json, read_run_config
from chitchat.training.dist import DistContext
from chitchat.training.report import METRICS, truncate_metrics
from chitchat.training.vocab import VocabAlignment, align_vocab, extend_embeddings, token_counts

_RUN_FILES = {RUN_CONFIG, METRICS, "loss.png", "summary.json", "best", "last"}


def note(cfg: TrainConfig, dist: DistContext, message: str) -> None:
    """A line for the user (rank 0, unless --quiet), written above the progress bar if one is showing."""
    if cfg.verbose and dist.is_main:
        tqdm.write(message, file=sys.stderr)


@dataclass
class RunInputs:
    cfg: TrainConfig          # resume turned off when there was no checkpoint yet
    state: dict               # the training state: fresh, or that of the checkpoint resumed
    saved_run: dict | None    # train_config.json of the run resumed
    train_ds: object
    valid_ds: object
    fingerprint: dict         # what identifies the train dataset (in train_config.json)
    model: object
    tokenizer: object
    alignment: VocabAlignment | None
    model_name: str

    @property
    def id_map(self):
        return self.alignment.id_map if self.alignment else None


def new_state() -> dict:
    return {"step": 0, "epoch": 0, "epoch_step": 0, "elapsed": 0.0, "best_valid_loss": None,
            "best_step": None, "bad_evals": 0, "last_eval_step": None, "valid_loss": None}


def _foreign_files(out: Path) -> list[str]:
    """Entries of a run directory that no training run writes (hidden temporary ones are the trainer's)."""
    if not out.exists():
        return []
    if not out.is_dir():
        return [out.name]
    return sorted(p.name for p in out.iterdir() if p.name not in _RUN_FILES and not p.name.startswith("."))


def _fingerprint(ds) -> dict:
    m = ds.manifest
    return {"vocab_hash": m["vocab_hash"], "tokens": m["counts"]["tokens"], "windows": m["counts"]["windows"],
            "max_len": m["max_len"]}


def _check_dataset_tokenizer(ds) -> object:
    tok = ds.tokenizer()
    if vocab_hash(tokenizer_tokens(tok)) != ds.vocab_hash:
        raise ChitchatError(f"{ds.dir}: its tokenizer does not match the vocabulary named in manifest.json; "
                            "preprocess again")
    return tok


def _load(path: Path, what: str):
    try:
        model, tok = load_model(path)
    except ChitchatError as e:
        raise ChitchatError(f"cannot load the {what}: {e}") from None
    except Exception as e:  # corrupt safetensors and the like
        raise ChitchatError(f"cannot load the {what} in {path}: {str(e).splitlines()[0][:200]}") from None
    if type(model).__name__ != "GPT2LMHeadModel":
        raise ChitchatError(f"{path}: a {type(model).__name__}, not a GPT-2 LM")
    return model, tok


def open_run_dir(cfg: TrainConfig, dist: DistContext) -> tuple[TrainConfig, dict, dict | None]:
    """The run directory checked: (config, training state, saved run config) of a new or resumed run."""
    out = Path(cfg.output)
    last_dir, best_dir = out / "last", out / "best"
    state, saved, restarting = new_state(), None, False
    if cfg.resume:
        if dist.is_main:
            for d in (last_dir, best_dir):
                recover_dir(d)
        dist.barrier()
    if cfg.resume and not (last_dir / "config.json").is_file():
        # stopped before its first checkpoint (or never started): start the run, and say so
        leftovers = _foreign_files(out)
        if leftovers:
            raise ChitchatError(f"{out}: no checkpoint to resume, and it holds files no training run "
                                f"writes ({', '.join(leftovers[:3])}); choose another --output")
        note(cfg, dist, f"{out}: no checkpoint to resume yet: starting the run from step 0")
        cfg = replace(cfg, resume=False)
        restarting = True
        if dist.is_main and out.is_dir():
            truncate_metrics(out, 0)
    if cfg.resume:
        saved = read_run_config(out)
        if saved is None:
            raise ChitchatError(f"{out}: not a training run (no {RUN_CONFIG})")
        previous = saved["config"]
        changed = [k for k in FIXED_ON_RESUME if previous.get(k) != config_to_json(cfg).get(k)]
        if changed:
            diffs = ", ".join(f"{k} {config_to_json(cfg).get(k)!r} (was {previous.get(k)!r})" for k in changed)
            raise ChitchatError(f"--resume must keep the run's settings; changed: {diffs}")
        state.update(read_training_state(last_dir))
    elif not restarting and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ChitchatError(f"{out} is not empty: pass --resume to continue the run in it, "
                            "or choose another --output")
    return cfg, state, saved


def load_datasets(cfg: TrainConfig, saved: dict | None):
    """(train, valid, fingerprint of train), checked against each other and against the run resumed."""
    train_ds = load_dataset(cfg.data, "train", mmi=cfg.mmi)
    if len(train_ds) == 0:
        raise ChitchatError(f"{cfg.data}: the train split is empty")
    if cfg.valid_data is not None:
        vd = load_dataset(cfg.valid_data, "train", mmi=cfg.mmi)
        if vd.vocab_hash != train_ds.vocab_hash:
            raise ChitchatError(f"{cfg.valid_data}: preprocessed with another vocabulary than {cfg.data}")
        vv = load_dataset(cfg.valid_data, "valid", mmi=cfg.mmi)
        vd.index = np.sort(np.concatenate([vd.index, vv.index]))
        valid_ds = vd
    else:
        valid_ds = load_dataset(cfg.data, "valid", mmi=cfg.mmi)
    fingerprint = _fingerprint(train_ds)
    if saved is not None and saved.get("dataset") != fingerprint:
        was = saved.get("dataset") or {}
        what = "another vocabulary" if was.get("vocab_hash") != fingerprint["vocab_hash"] else "different contents"
        raise ChitchatError(f"{cfg.data}: this dataset has {what} than the one the run in {cfg.output} was trained on")
    return train_ds, valid_ds, fingerprint


def load_model_for(cfg: TrainConfig, dist: DistContext, train_ds, saved: dict | None):
    """(model, tokenizer, vocabulary alignment or None, model name) the run trains."""
    data_tok = _check_dataset_tokenizer(train_ds)

    def counts() -> np.ndarray:
        return token_counts(train_ds.tokens, int(train_ds.manifest["vocab_size"]))

    last_dir = Path(cfg.output) / "last"
    alignment = None
    if cfg.resume:
        model, tok = _load(last_dir, "checkpoint")
        alignment = align_vocab(tok, data_tok, counts(), extend=False)
        if alignment.added or len(tok) > model.config.vocab_size:
            raise ChitchatError(f"{last_dir}: checkpoint tokenizer and model do not match")
        model_name = saved.get("model_name", str(last_dir))
    elif cfg.init_from is not None:
        model, tok = _load(cfg.init_from, "model")
        if cfg.model_config:
            note(cfg, dist, "note: --config is ignored with --init-from (the model keeps its configuration)")
        alignment = align_vocab(tok, data_tok, counts(), extend=cfg.extend_vocab)
        if alignment.added:
            extend_embeddings(model, len(alignment.tokenizer))
        tok = alignment.tokenizer
        model_name = str(cfg.init_from)
    else:
        try:
            model = build_model(data_tok, cfg.preset, cfg.model_config, seed=cfg.seed)
        except (ValueError, TypeError, AssertionError) as e:
            raise ChitchatError(f"bad model configuration: {str(e).splitlines()[0]}") from None
        tok = data_tok
        model_name = f"preset {cfg.preset}" + (" + config" if cfg.model_config else "")
    return model, tok, alignment, model_name


def load_inputs(cfg: TrainConfig, dist: DistContext) -> RunInputs:
    """Every input of the run, checked; every rank has checked its own before this returns."""
    cfg, state, saved = open_run_dir(cfg, dist)
    train_ds, valid_ds, fingerprint = load_datasets(cfg, saved)
    model, tok, alignment, model_name = load_model_for(cfg, dist, train_ds, saved)
    max_len = int(train_ds.manifest["max_len"])
    longest = int(max(train_ds.lengths.max(), valid_ds.lengths.max() if len(valid_ds) else 0))
    positions = int(model.config.n_positions)
    if max(max_len, longest) > positions:
        raise ChitchatError(f"{cfg.data}: windows of up to {max(max_len, longest)} tokens (max_len) do not fit "
                            f"the model's {positions} positions; preprocess with --max-len {positions} "
                            "or use a model with more positions")
    if len(tok) > model.config.vocab_size:
        raise ChitchatError(f"the tokenizer has {len(tok)} tokens but the model only "
                            f"{model.config.vocab_size} embeddings")
    dist.barrier()  # every rank has checked its input before rank 0 writes anything
    return RunInputs(cfg, state, saved, train_ds, valid_ds, fingerprint, model, tok, alignment, model_name)

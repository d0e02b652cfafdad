"""chitchat: a multi-turn Chinese chitchat bot (preprocess, train, chat, eval, serve).

The public API, importable from the top:

    import chitchat
    engine = chitchat.Engine.load(*chitchat.ensure_default_model())
    print(engine.reply(["你好"], seed=1).text)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it. The names are resolved on first use (PEP 562 module
# `__getattr__`), not here: most of them pull in torch and transformers, which take seconds to
# import, and `import chitchat` (the CLI's `--help`, `chitchat.errors` in a light tool) must not pay
# for that. Only the modules a name needs are imported, once, then the name is cached in globals().
_EXPORTS = {
    "ChitchatError": "chitchat.errors",
    "load_model": "chitchat.model.gpt2",
    "save_model": "chitchat.model.gpt2",
    "ensure_default_model": "chitchat.model.default",
    "preprocess": "chitchat.tokens.preprocess",
    "PreprocessConfig": "chitchat.tokens.preprocess",
    "train": "chitchat.training.trainer",
    "TrainConfig": "chitchat.training.config",
    "Engine": "chitchat.engine.engine",
    "ReplySettings": "chitchat.engine.settings",
    "Scoring": "chitchat.engine.scoring",
    "register_scoring": "chitchat.engine.scoring",
    "evaluate": "chitchat.eval.evaluate",
    "EvalConfig": "chitchat.eval.cases",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chitchat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

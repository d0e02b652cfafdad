"""chitchat: a multi-turn Chinese chitchat bot (preprocess, train, chat, eval, serve)."""

__version__ = "0.1.0"

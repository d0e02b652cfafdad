"""Replies from a model: the fast GPT-2 decoder, sampling, MMI ranking, int8 weights, the `Engine`."""

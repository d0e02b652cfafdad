"""Replies from a model. fast.py: the GPT-2 decoder (FastGPT2); quantize.py: its int8 and fp32 linear layers;
sampler.py: choosing the next token; replies.py: what comes back (Candidate, Reply, streamed steps);
engine.py: the `Engine` (batched sampling, MMI ranking); settings.py and options.py: a conversation's
settings and the command-line flags shared by chat, eval and serve."""

"""Replies from a model. fast.py: the GPT-2 decoder (FastGPT2); quantize.py: its int8 and fp32 linear layers;
sampler.py: choosing the next token; sources.py: candidate sources besides sampling; scoring.py: the
registry of scorings (builtin_scorings.py: likelihood, MMI, PMI); ranking.py: rankings over them and
choosing; replies.py: what comes back (Candidate, Reply, streamed steps); engine.py: the `Engine`;
settings.py: `ReplySettings`, every setting of a reply declared once; options.py: the engine's
command-line flags (which models, where) shared by chat, eval and serve."""

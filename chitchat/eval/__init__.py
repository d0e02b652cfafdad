"""Scoring models: perplexity, overlap and diversity metrics of generated replies, coherence (the true
reply among distractors), response selection (Douban layout), the report (`chitchat eval`)."""

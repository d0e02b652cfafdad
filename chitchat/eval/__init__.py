"""Scoring models on a dialogue dataset: perplexity, overlap and diversity metrics, the report."""

"""Serving lexicon vectors: JSONL export for inverted indexes, sparse and dense retrievers, lexicon-patch heatmaps."""

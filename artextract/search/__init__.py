"""The one search service behind ``artextract search`` and ``artextract serve``: service.py (hits,
re-ranking), query.py (image queries), catalog.py (metadata, faces, pixels), rerank.py (pose, copies)."""

"""Ingest sources (WikiArt, NGA open data, any folder/bucket) into a manifest."""

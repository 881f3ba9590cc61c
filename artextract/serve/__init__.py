"""``artextract serve``: the visual-search web page and JSON API over a published index.

``app`` (FastAPI routes, uvicorn runner), ``engine`` (served version, reload, queries, uploads),
``catalog`` (metadata, boxes, poses and JPEGs read from storage), ``static/`` (the page: plain
HTML/CSS/JS, no build step). Importing this package starts nothing.
"""

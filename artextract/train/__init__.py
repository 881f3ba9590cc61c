"""Training: plain-torch loop (loop.py), task definitions, and the Ray Train wrapper (ray_train.py)."""

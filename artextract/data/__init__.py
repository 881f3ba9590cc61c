"""Training-data helpers (torch only): m-per-class batch sampling and reproduction augmentations."""

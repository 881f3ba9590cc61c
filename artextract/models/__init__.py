"""Torch-only models: backbone registry, embedding nets. Never touches torch.distributed."""

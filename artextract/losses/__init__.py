"""Metric-learning losses and miners; ``distributed.GatherLoss`` is the only torch.distributed user."""
from artextract.losses.base import LOSSES, MINERS, build_loss, pairwise_distance

# Importing the modules registers their losses and miners.
from artextract.losses import contrastive, miners, supcon, triplet  # noqa: E402,F401
from artextract.losses.contrastive import ContrastiveLoss  # noqa: E402
from artextract.losses.distributed import GatherLoss  # noqa: E402
from artextract.losses.supcon import SupConLoss  # noqa: E402
from artextract.losses.triplet import TripletLoss  # noqa: E402

__all__ = ["LOSSES", "MINERS", "ContrastiveLoss", "GatherLoss", "SupConLoss", "TripletLoss", "build_loss", "pairwise_distance"]

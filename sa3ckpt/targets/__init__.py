"""Model families and their adapter targets, as data."""

from sa3ckpt.targets.detect import FamilyDetection, FamilyScore, detect_family
from sa3ckpt.targets.families import (
    FAMILIES,
    PUBLISHED_FAMILIES,
    Family,
    family,
    family_for_base_model,
)
from sa3ckpt.targets.topology import Target, Topology, build_targets

__all__ = [
    "FAMILIES",
    "PUBLISHED_FAMILIES",
    "Family",
    "FamilyDetection",
    "FamilyScore",
    "Target",
    "Topology",
    "build_targets",
    "detect_family",
    "family",
    "family_for_base_model",
]

"""Few-shot heads: CLIP-FSAR, its baselines, OTAM, the head registry and checkpoints.

CLIP-FSAR: Wang et al., "CLIP-guided Prototype Modulating for Few-shot Action Recognition",
IJCV 2023. OTAM: Cao et al., "Few-Shot Video Classification via Temporal Alignment", CVPR 2020.
Importing this package registers every head (``list_heads()``).
"""

from __future__ import annotations

from .base import FewShotHead, group_support
from .baselines import OTAMHead, ProtoHead, TextHead
from .checkpoint import (
    ImportResult,
    import_reference_checkpoint,
    load_head_checkpoint,
    load_reference_checkpoint,
    reference_key_to_fsar,
    save_head_checkpoint,
)
from .clipfsar import CLIPFSARHead
from .otam import cos_sim, frame_distances, otam_distance
from .registry import (
    UnknownHeadError,
    create_head,
    describe_heads,
    list_heads,
    register_head,
)
from .transformer import ResidualAdapter, TemporalTransformer

__all__ = [
    "otam_distance",
    "cos_sim",
    "frame_distances",
    "CLIPFSARHead",
    "ProtoHead",
    "OTAMHead",
    "TextHead",
    "FewShotHead",
    "TemporalTransformer",
    "ResidualAdapter",
    "register_head",
    "create_head",
    "list_heads",
    "describe_heads",
    "group_support",
    "UnknownHeadError",
    "load_reference_checkpoint",
    "import_reference_checkpoint",
    "ImportResult",
    "save_head_checkpoint",
    "load_head_checkpoint",
    "reference_key_to_fsar",
]

"""Box fusion, the floor that both `convert` (the radiologists' boxes) and `ensemble` (the models')
stand on: the engine (`fuse`, `fuse_many`: WBF, NMS, Soft-NMS, NMW), the gate's rules that meet
boxes with a classifier's P(abnormal) (`apply_gate`), and the settings that say how
(`FusionSettings`). Imports only `core`.
"""

from fusion.engine import CONF_TYPES, METHODS, SOFT_METHODS, fuse, fuse_many, fuse_with
from fusion.gate import GATE_MODES, apply_gate, strip_no_finding
from fusion.settings import FusionSettings

__all__ = [
    "CONF_TYPES",
    "GATE_MODES",
    "METHODS",
    "SOFT_METHODS",
    "FusionSettings",
    "apply_gate",
    "fuse",
    "fuse_many",
    "fuse_with",
    "strip_no_finding",
]

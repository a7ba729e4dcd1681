"""Framework-free building blocks shared by every CXRFuse package.

`Detections` is the in-memory currency between adapters, the ensemble and the
evaluator; `coco` reads, writes and validates the COCO files that connect the
steps on disk. Nothing here imports a training framework.
"""

from core.detections import Detections, from_coco_results, to_coco_results

__all__ = ["Detections", "from_coco_results", "to_coco_results"]

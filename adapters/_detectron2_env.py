"""What detectron2 v0.6's Python sources need to import on current libraries.

The PyPI sdist we install (``pb1-detectron2==0.6``, see DESIGN.md) is built
without its C++ extension; Faster R-CNN then runs on torchvision's RoIAlign and
NMS. Two gaps remain at import: ``detectron2._C`` must exist (an empty module is
enough for the parts we use), and ``PIL.Image.LINEAR`` (removed in Pillow 10)
must alias ``BILINEAR``. Call `prepare_detectron2` before the first detectron2
import. Upstream detectron2 built from source has ``_C`` and is left untouched.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def prepare_detectron2() -> None:
    """Install the two import shims; idempotent.

    Raises:
        ImportError: with the install hint, if detectron2 is not installed.
    """
    import PIL.Image

    if not hasattr(PIL.Image, "LINEAR"):
        PIL.Image.LINEAR = PIL.Image.BILINEAR
    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        raise ImportError("detectron2 is not installed: run `make setup` (or scripts/setup.sh)")
    if "detectron2._C" not in sys.modules and importlib.util.find_spec("detectron2._C") is None:
        sys.modules["detectron2._C"] = types.ModuleType("detectron2._C")

"""Weight files that never run code unless the user trusts them, and starting from other weights.

`load_weights` reads torch files with ``torch.load(weights_only=True)`` (`load_checkpoint_safe`) and
``.pkl`` files with an unpickler that only rebuilds numpy arrays and plain containers
(`load_pickle_numpy_safe`); a file that pickles other Python objects (Ultralytics' own ``.pt``, a
crafted file) is a `PickledObjectsError` unless the config's ``trust_weights`` (``--trust-weights``)
allows a full unpickle (`load_trusted`). Checkpoints CXRFuse writes hold tensors and plain data only
(`save_torch_file`). Starting from other weights loads every tensor whose name and shape fit and
reports the rest (`transfer_weights`, `WeightsReport`).

Nothing here imports a training framework; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import pickletools
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters.errors import AdapterError

logger = logging.getLogger(__name__)


TRUST_HINT = "pass --trust-weights (config: trust_weights: true)"


class PickledObjectsError(AdapterError):
    """A weights file that pickles Python objects, which only a full unpickle (running code) can load.

    Attributes:
        path: the file.
        objects: the pickled classes or functions found (``module.name``), as far as known.
    """

    def __init__(self, path: Path, objects: Sequence[str]) -> None:
        self.path = Path(path)
        self.objects = list(objects)
        shown = ", ".join(self.objects[:3]) + (", ..." if len(self.objects) > 3 else "")
        super().__init__(
            f"{path}: refused: the file pickles Python objects ({shown or 'unknown'}), and unpickling "
            "them would run code from the file; CXRFuse loads weights only as tensors, numpy arrays "
            "and plain data. If you trust this file (Ultralytics' own .pt files pickle their model "
            f"classes), {TRUST_HINT} to load it with a full unpickle"
        )


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: weights file not found (nothing is downloaded: pass a local file)")
    return path


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as pickles of ``bytes`` (protocol 2) use it: latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[str, Any]:
    """The globals a numpy array, dtype or scalar pickles, by ``module.name`` (numpy 1 and 2 names)."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = reconstruct
        allowed[f"{module}.scalar"] = scalar
    for dtype in {type(np.dtype(c)) for c in np.typecodes["All"]}:
        allowed[f"{dtype.__module__}.{dtype.__name__}"] = dtype
    return allowed


def _pickle_allowed() -> dict[str, Any]:
    """What `load_pickle_numpy_safe` lets a pickle name: numpy arrays, dtypes, scalars, ``OrderedDict``."""
    return {
        **_numpy_globals(),
        "collections.OrderedDict": collections.OrderedDict,
        "_codecs.encode": _latin1_encode,
    }


_STRING_OPS = frozenset(
    ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8")
)


def _pickle_globals(data: bytes) -> list[str]:
    """The classes and functions (``module.name``) the pickles in ``data`` name, read without unpickling.

    Reads consecutive pickles (a legacy torch file holds several) until the bytes stop parsing.
    """
    names: list[str] = []
    pushed: list[Any] = []  # what each opcode pushed, as far as strings matter
    memo: dict[int, Any] = {}
    f = io.BytesIO(data)
    while f.tell() < len(data):
        try:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(".".join(str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL":
                    mod, name = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                    names.append(f"{mod}.{name}" if isinstance(mod, str) and isinstance(name, str) else "?")
                elif op.name in _STRING_OPS:
                    pushed.append(arg.decode("latin1") if isinstance(arg, bytes) else arg)
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                else:
                    pushed.append(None)
        except Exception:  # the rest is not a pickle (a legacy torch file's raw storages) or is damaged
            break
    return list(dict.fromkeys(names))


def pickled_objects(path: str | Path) -> list[str]:
    """The classes and functions a weights file pickles beyond tensors, numpy arrays and plain data.

    Reads the file's pickle opcodes without unpickling anything: a torch zip checkpoint's
    ``data.pkl``, else the file itself. Torch's own rebuild functions and the numpy globals that
    `load_pickle_numpy_safe` allows are left out.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(member) if member else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    allowed = _pickle_allowed()
    return [
        n
        for n in _pickle_globals(data)
        if n not in allowed and not n.startswith("torch.") and n != "builtins.set"
    ]


def _short(error: BaseException) -> str:
    """A torch or pickle error in one short line (torch's weights-only errors run to a paragraph)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("\n\nCheck the documentation")[0]
    return " ".join(text.split())[:300] or type(error).__name__


def load_checkpoint_safe(path: str | Path) -> Any:
    """A torch checkpoint read with ``torch.load(weights_only=True)``: nothing in it can run code.

    Tensors, plain containers and values, and numpy arrays, dtypes and scalars are read; any
    other pickled class or function is refused.

    Raises:
        PickledObjectsError: the file pickles other Python objects (Ultralytics' own ``.pt``,
            a crafted file); `load_trusted` reads it when the user trusts it.
        AdapterError: no such file, or not a readable torch checkpoint.
    """
    import torch

    path = _require_file(path)
    numpy_globals = _numpy_globals()
    allow = [*dict.fromkeys(numpy_globals.values())]
    allow += [(obj, name) for name, obj in numpy_globals.items() if name.startswith("numpy.core.")]
    try:
        with torch.serialization.safe_globals(allow):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused objects, or a damaged or foreign file
        objects = pickled_objects(path)
        if objects or "Unsupported global" in str(e):
            if not objects:
                m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
                objects = [m.group(1)] if m else []
            raise PickledObjectsError(path, objects) from None
        raise AdapterError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {_short(e)})") from None


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and values, numpy arrays, dtypes and scalars; refuses any other global."""

    _allowed: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get(f"{module}.{name}")
        if obj is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids (a torch file, not a plain pickle)")


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def load_pickle_numpy_safe(path: str | Path) -> Any:
    """A plain pickle of numpy arrays (Detectron2's and Caffe2's ``.pkl`` model-zoo files), read safely.

    A restricted unpickler allows only numpy array, dtype and scalar reconstruction and plain
    containers (dict, list, tuple, ``OrderedDict``, str, bytes, numbers); nothing in the file
    can run code. Python 2 pickles are read as Detectron2 reads them (``encoding="latin1"``).

    Raises:
        PickledObjectsError: the file pickles any other class or function.
        AdapterError: no such file, or not a readable pickle.
    """
    path = _require_file(path)
    unpickler = type("Unpickler", (_NumpyUnpickler,), {"_allowed": _pickle_allowed()})
    try:
        with open(path, "rb") as f:
            return unpickler(f, encoding="latin1").load()
    except _RefusedGlobal as e:
        raise PickledObjectsError(path, pickled_objects(path) or [str(e)]) from None
    except Exception as e:  # a damaged or foreign file
        raise AdapterError(f"{path}: not a readable pickle of numpy arrays ({type(e).__name__}: {_short(e)})") from None


def load_trusted(path: str | Path, trust: bool, objects: Sequence[str] = ()) -> Any:
    """A full unpickle of ``path`` (``pickle.load`` for ``.pkl``, else ``torch.load(weights_only=False)``).

    A full unpickle runs whatever code the file holds, so it happens only when the user says
    they trust the file (``--trust-weights``, ``trust_weights: true``).

    Args:
        path: the weights file.
        trust: the user's ``trust_weights``; without it the file is refused.
        objects: the pickled objects found in the file, named in the refusal.

    Raises:
        PickledObjectsError: ``trust`` is false (the message says why and what the flag does).
        AdapterError: no such file, or the file does not load even so.
    """
    path = _require_file(path)
    if not trust:
        raise PickledObjectsError(path, list(objects) or pickled_objects(path))
    logger.warning("%s: full unpickle (trust_weights): any code in the file has run", path)
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged or foreign file
        raise AdapterError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_short(e)})") from None


def load_weights(path: str | Path, trust: bool = False) -> Any:
    """Read any weights file CXRFuse takes, without running code unless the user trusts it.

    ``.pkl`` files go through `load_pickle_numpy_safe`, every other file through
    `load_checkpoint_safe`; a file that pickles other Python objects is read by `load_trusted`
    when ``trust`` is set and refused otherwise.

    Raises:
        PickledObjectsError: the file pickles Python objects and ``trust`` is false.
        AdapterError: no such file, or not a readable checkpoint.
    """
    path = _require_file(path)
    try:
        return load_pickle_numpy_safe(path) if path.suffix == ".pkl" else load_checkpoint_safe(path)
    except PickledObjectsError as e:
        return load_trusted(path, trust, e.objects)


def tensor_dict(obj: Any, path: str | Path, keys: Sequence[str] = ("state_dict", "model")) -> dict[str, Any]:
    """The state dict in a checkpoint: ``obj[key]`` for the first of ``keys`` holding one, or ``obj``.

    ``module.`` prefixes (a checkpoint of a DataParallel model) are removed.

    Raises:
        AdapterError: no mapping of names to tensors or arrays.
    """
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return {str(k).removeprefix("module."): v for k, v in obj.items()}
    raise AdapterError(f"{path}: holds no state dict (no mapping of names to tensors)")


WEIGHTS_REPORT = "weights_report.json"


@dataclass
class WeightsReport:
    """What starting from a weights file did: the tensors loaded, skipped and left as initialised.

    Attributes:
        source: the weights file.
        loaded: the model's tensors taken from the file.
        skipped: the file's tensors not used (not in the model, or of another shape: a head
            made for another number of classes).
        new: the model's tensors the file did not give, left as initialised.
    """

    source: str
    loaded: list[str]
    skipped: list[str]
    new: list[str]

    def summary(self) -> str:
        """One line: how many tensors were loaded, skipped and left new, with examples."""
        text = f"start weights {self.source}: {len(self.loaded)} tensors loaded, {len(self.skipped)} skipped"
        if self.skipped:
            text += f" (e.g. {self.skipped[0]})"
        text += f", {len(self.new)} left as initialised"
        if self.new:
            text += f" (e.g. {self.new[0]})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": self.source,
            "loaded": len(self.loaded),
            "skipped": len(self.skipped),
            "new": len(self.new),
            "skipped_tensors": self.skipped,
            "new_tensors": self.new,
        }

    def write(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/weights_report.json`` (and log the summary)."""
        from core.io import write_json

        logger.info("%s", self.summary())
        path = Path(run_dir) / WEIGHTS_REPORT
        write_json(path, self.to_json(), indent=1)
        return path


def transfer_weights(model: Any, state_dict: dict[str, Any], source: str | Path) -> WeightsReport:
    """Load into ``model`` every tensor of ``state_dict`` whose name and shape match; the rest stays.

    A head made for another number of classes has other shapes and stays as initialised.

    Returns:
        What was loaded, skipped and left new.
    """
    import torch

    want = model.state_dict()
    keep: dict[str, Any] = {}
    for k, v in state_dict.items():
        if k in want and tuple(v.shape) == tuple(want[k].shape):
            keep[k] = torch.as_tensor(v) if isinstance(v, np.ndarray) else v
    model.load_state_dict(keep, strict=False)
    return WeightsReport(
        str(source),
        [k for k in want if k in keep],
        [k for k in state_dict if k not in keep],
        [k for k in want if k not in keep],
    )


def save_torch_file(path: Path, obj: Any) -> Path:
    """``torch.save`` under a temporary name, renamed onto ``path`` only once complete."""
    import torch

    from core.io import atomic_open

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)

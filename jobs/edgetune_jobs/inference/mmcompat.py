"""Loading mmengine checkpoints with torch >= 2.6 (weights-only torch.load by default).

A checkpoint saved by mmengine's CheckpointHook pickles, besides tensors:

- ``message_hub``: mmengine ``HistoryBuffer`` objects, whose state holds numpy arrays and
  its statistics methods (``HistoryBuffer.min`` etc., pickled as
  ``getattr(HistoryBuffer, "min")``);
- numpy scalars and arrays (``numpy._core.multiarray.scalar`` / ``_reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``), named ``numpy.core.multiarray.*`` when the
  checkpoint was written with numpy 1.x (the published OpenMMLab checkpoints).

allow_mmengine_checkpoints() registers exactly these with
``torch.serialization.add_safe_globals``; everything else still goes through the
weights-only unpickler. ``builtins.getattr`` is NOT allowed as such (it would reopen
arbitrary attribute access, hence code execution): the name is bound to
``_history_buffer_getattr``, which resolves only ``getattr(HistoryBuffer, <statistics
method>)`` and refuses anything else.

Use it before mmengine loads a checkpoint (Runner load_from, load_checkpoint,
mmdeploy's model builders)::

    from edgetune_jobs.inference.mmcompat import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
"""

from __future__ import annotations

import pickle
from typing import Any

_done = False

# HistoryBuffer statistics methods that may appear in its pickled state
_HISTORY_METHODS = ("min", "max", "current", "mean")


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stands in for builtins.getattr while unpickling: HistoryBuffer methods only."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer's "
                       f"statistics methods {_HISTORY_METHODS} are allowed")


def safe_globals() -> list[Any]:
    """The (object) or (object, pickled name) entries allow_mmengine_checkpoints registers."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        multiarray = np.core.multiarray
    entries: list[Any] = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (_history_buffer_getattr, "builtins.getattr"),
    ]
    # numpy >= 1.25 may pickle dtypes as their classes (numpy.dtypes.Float64DType, ...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
                     "Int16DType", "Int8DType", "UInt8DType", "BoolDType"):
            cls = getattr(dtypes, name, None)
            if cls is not None:
                entries.append((cls, f"numpy.dtypes.{name}"))
    return entries


def allow_mmengine_checkpoints() -> None:
    """Register the globals mmengine checkpoints need with torch's weights-only loader.
    Idempotent; a no-op on torch without add_safe_globals (< 2.4: full unpickling anyway)."""
    global _done
    if _done:
        return
    import torch.serialization as ser

    if hasattr(ser, "add_safe_globals"):
        ser.add_safe_globals(safe_globals())
    _done = True

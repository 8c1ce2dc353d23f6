"""Reading the python-pickle files of CIFAR without letting them run code.

A pickle is a program: `pickle.load` calls whatever callables the file names (`os.system`,
`builtins.exec`, ...). The CIFAR batches need only dicts, lists, bytes, strings, numbers and
numpy arrays, so the unpickler here resolves nothing but numpy's own array and dtype
reconstructors (and `_codecs.encode`, which protocol 2 uses for bytes); any other global
stops the load before it is called.
"""
from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy 2 renamed numpy.core to numpy._core
    from numpy._core import multiarray, numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]

# (module, name) as pickles spell them -> the object; numpy 1.x files say numpy.core, 2.x numpy._core
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(package, "_reconstruct"): multiarray._reconstruct for package in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(package, "scalar"): multiarray.scalar for package in ("numpy.core.multiarray", "numpy._core.multiarray")},
    # private, so absent from numpy's stubs
    **{(package, "_frombuffer"): numeric._frombuffer  # type: ignore[attr-defined]
       for package in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a callable a data file has no business calling; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        self.callable = f"{module}.{name}"
        super().__init__(f"it would call {self.callable}")


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in `_ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it refers to persistent objects")


def load_data_pickle(path: Path) -> Any:
    """The object a data-only pickle file holds (bytes strings kept as bytes, as CIFAR's Python 2 files need).

    Raises UnsafePickleError for a file that would call anything else, and pickle.UnpicklingError,
    EOFError or ValueError for one that is not a whole pickle.
    """
    data = path.read_bytes()
    return _DataOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()

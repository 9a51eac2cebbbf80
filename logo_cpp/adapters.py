"""A pool of LoRA adapters resident beside a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from . import _core
from .model import Model

PathLike = Union[str, os.PathLike]


def _expand(paths: Union[PathLike, Iterable[PathLike]]) -> list[str]:
    """Files as given; a directory stands for its *.gguf files, sorted by name."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(str(f) for f in p.glob("*.gguf"))
            if not found:
                raise FileNotFoundError(f"directory '{p}' holds no .gguf adapter files")
            out.extend(found)
        else:
            out.append(str(p))
    return out


class AdapterPool:
    """LoRA adapters (llama.cpp's GGUF format) validated against ``model`` and kept resident.

    Adapters are named after their file's stem unless ``names`` says otherwise. Every load is all or
    nothing: if one file is bad, the pool stays as it was and the error names the file and tensor.
    """

    def __init__(self, model: Model, paths: Union[PathLike, Iterable[PathLike], None] = None, *,
                 names: Optional[Sequence[str]] = None):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a logo_cpp.Model, got {type(model).__name__}")
        self.model = model
        self._core = _core.AdapterPool(model._core)
        model._attach_pool(self)
        if paths is not None:
            self.add(paths, names=names)

    def add(self, paths: Union[PathLike, Iterable[PathLike]], *, names: Optional[Sequence[str]] = None,
            name: Optional[str] = None) -> list[str]:
        """Loads one file, several, or a directory of *.gguf; returns the names given to them."""
        files = _expand(paths)
        if name is not None:
            if len(files) != 1:
                raise ValueError("name= applies to a single adapter file; use names= for several")
            names = [name]
        if names is not None and len(names) != len(files):
            raise ValueError(f"{len(names)} names for {len(files)} adapter files")
        with self.model._lock:
            return self._core.add(files, list(names or []))

    def remove(self, name: str) -> None:
        with self.model._lock:
            self._core.remove(name)

    @property
    def names(self) -> list[str]:
        return self._core.names()

    def __len__(self) -> int:
        return len(self._core)

    def __contains__(self, name: str) -> bool:
        return self._core.index_of(name) >= 0

    def __iter__(self):
        return iter(self.names)

    def index(self, name: str) -> int:
        i = self._core.index_of(name)
        if i < 0:
            raise KeyError(f"no adapter named {name!r} in the pool (have: {', '.join(self.names) or 'none'})")
        return i

    def info(self, name: str) -> dict:
        """Path, alpha, resident bytes, and each adapted matrix's rank, scale and types."""
        return self._core.info(self.index(name))

    @property
    def nbytes(self) -> int:
        return self._core.bytes

    def __repr__(self) -> str:
        return f"AdapterPool({len(self)} adapters, {self.nbytes / 2**20:.1f} MiB)"

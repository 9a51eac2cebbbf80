"""A pool of LoRA adapters resident beside a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from . import _core, peft
from ._closing import CoreHandle
from .model import Model

PathLike = Union[str, os.PathLike]


def _expand(paths: Union[PathLike, Iterable[PathLike]]) -> list[tuple[str, str]]:
    """(kind, path) per adapter, kind "gguf" or "peft": files and PEFT adapter directories as given; any
    other directory stands for its *.gguf files and the PEFT adapter directories in it, sorted by name."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    elif isinstance(paths, bytes) or not isinstance(paths, Iterable):
        raise TypeError(f"paths must be a path (str or os.PathLike) or a list of paths, got {type(paths).__name__}")
    out: list[tuple[str, str]] = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"an adapter path must be str or os.PathLike, got {type(p).__name__} {p!r}")
        p = Path(p)
        if peft.is_peft_path(p):
            out.append(("peft", str(p)))
        elif p.is_dir():
            found = sorted([f for f in p.glob("*.gguf")] + [d for d in p.iterdir() if d.is_dir() and peft.is_peft_path(d)])
            if not found:
                raise FileNotFoundError(f"directory '{p}' holds no .gguf adapter files and no PEFT adapter directories "
                                        f"(with {peft.CONFIG_FILE})")
            out.extend(("peft" if f.is_dir() else "gguf", str(f)) for f in found)
        else:
            out.append(("gguf", str(p)))
    return out


class AdapterPool:
    """LoRA adapters validated against ``model`` and kept resident: GGUF files in llama.cpp's format, and
    Hugging Face PEFT LoRA directories (adapter_config.json + adapter_model.safetensors, read without torch;
    see logo_cpp.peft for how module names, scales and llama's Q/K row order are mapped).

    Adapters are named after their file's stem (a PEFT adapter after its directory) unless ``names`` says
    otherwise. Every load is all or nothing: if one adapter is bad, the pool stays as it was and the error
    names the file and the tensor or setting.

    ``close()`` (or the end of a ``with AdapterPool(...) as pool:`` block) frees the adapters at once; closing
    the model closes its pools too.
    """

    # The C++ pool: gone after close(), and every use then raises ClosedError.
    _core = CoreHandle()

    def __init__(self, model: Model, paths: Union[PathLike, Iterable[PathLike], None] = None, *,
                 names: Optional[Sequence[str]] = None):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a logo_cpp.Model, got {type(model).__name__}")
        self.model = model
        self._core = _core.AdapterPool(model._core)
        model._attach_pool(self)
        if paths is not None:
            try:
                self.add(paths, names=names)
            except BaseException:
                self.close()  # the caller never gets this pool: free it now, and the model forgets it
                raise

    def close(self) -> None:
        """Frees the adapters (and their probe stacks) now. Afterwards every method and property of the pool
        raises logo_cpp.ClosedError, and so do routers over it; the model no longer finds its adapter names
        (``adapters=`` raises KeyError); closing again does nothing. A generation running on another thread
        with a mixture of this pool finishes first (close() waits for the model). Requests already running in
        a server Engine keep their mixtures (the batch holds its own copy of what it uses) and finish."""
        with self.model._lock:
            if self.closed:
                return
            self.model._detach_pool(self)
            self._core = None

    @property
    def closed(self) -> bool:
        """True after close() (of the pool or of its model)."""
        return self.__dict__.get(AdapterPool._core.slot) is None

    def _closed_message(self) -> str:
        return ("this AdapterPool is closed: its close(), the end of its `with` block or its Model's close() "
                "freed it; load the adapters again to use them")

    def __enter__(self) -> "AdapterPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, paths: Union[PathLike, Iterable[PathLike]], *, names: Optional[Sequence[str]] = None,
            name: Optional[str] = None) -> list[str]:
        """Loads adapters and returns the names given to them. ``paths``: a GGUF file, a PEFT adapter
        directory (or its adapter_model.safetensors), a directory of those, or a list of any of these.

        Raises FileNotFoundError, logo_cpp.FormatError (naming the file and tensor or setting: DoRA,
        modules_to_save, embedding or lm_head LoRA, unknown modules, shapes that do not fit the base, ...),
        ValueError for duplicate names; on any error the pool is unchanged."""
        entries = _expand(paths)
        if name is not None:
            if len(entries) != 1:
                raise ValueError("name= applies to a single adapter; use names= for several")
            names = [name]
        if names is not None and len(names) != len(entries):
            raise ValueError(f"{len(names)} names for {len(entries)} adapters")
        names = list(names or [""] * len(entries))
        with self.model._lock:
            added: list[str] = []
            try:
                # Consecutive GGUF files go in one all-or-nothing call; PEFT adapters are read and added one
                # at a time (only one is ever held in Python memory). Any failure takes out what this call
                # added before it.
                i = 0
                while i < len(entries):
                    if entries[i][0] == "peft":
                        adapter = peft.load_for_model(entries[i][1], self.model._core, name=names[i] or None)
                        added += self._core.add_tensors([peft.as_core_adapter(adapter)])
                        i += 1
                        continue
                    j = i
                    while j < len(entries) and entries[j][0] == "gguf":
                        j += 1
                    added += self._core.add([p for _, p in entries[i:j]], names[i:j])
                    i = j
            except BaseException:
                for n in added:
                    self._core.remove(n)
                raise
            return added

    def remove(self, name: str) -> None:
        """Unloads the adapter called ``name``. Raises TypeError for a non-str name, ValueError when the pool
        has no adapter of that name."""
        if not isinstance(name, str):
            raise TypeError(f"name must be str, got {type(name).__name__}")
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
        if self.closed:
            return "AdapterPool(closed)"
        return f"AdapterPool({len(self)} adapters, {self.nbytes / 2**20:.1f} MiB)"

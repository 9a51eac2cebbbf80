"""close() for the Python objects that hold C++ memory (Model, AdapterPool): after close() their C++ handles
are gone, and any use raises ClosedError instead of reaching freed memory."""

from __future__ import annotations


class ClosedError(ValueError):
    """A Model or AdapterPool was used after its close() (or after its ``with`` block). A ValueError, as
    Python's own "I/O operation on closed file" is."""


class CoreHandle:
    """A class attribute for a C++ handle of a closable object: reading it after the handle was set to None
    (by close()) raises ClosedError with the owner's ``_closed_message()``. Every method and property of the
    owner reaches C++ through such a handle, so each of them raises after close() without a check of its own."""

    def __set_name__(self, owner, name: str) -> None:
        self.slot = "_handle" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__.get(self.slot)
        if value is None:
            raise ClosedError(obj._closed_message())
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.slot] = value

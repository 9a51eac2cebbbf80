"""A persistent cache of calibration statistics, so that a one-shot ``logo-cpp route`` does not recompute them.

The calibrated routers (calibration "zscore", "zscore_sq": the default) standardise each adapter's signal with
its mean and std over the library's generic prompts. Computing them runs the 126 prompts through the model
(about 9 s for SmolLM2-135M on one core); a process keeps them in memory, and this module keeps them on disk
between processes.

Where: ``<cache dir>/calibration/<key>.json``, one file per model identity, where the cache dir is, in order,
the ``cache_dir`` argument of the routers, ``$LOGO_CPP_CACHE_DIR``, or the user cache dir of platformdirs
(``$XDG_CACHE_HOME/logo-cpp``, by default ``~/.cache/logo-cpp`` on Linux, ``~/Library/Caches/logo-cpp`` on macOS,
``%LOCALAPPDATA%\\logo-cpp\\Cache`` on Windows). ``cache_dir=False`` or ``LOGO_CPP_NO_CACHE=1`` turns it off.
Clear it by deleting the directory (``logo-cpp cache --clear``).

What a file's statistics are valid for, all of it in the file's key (compared in full on reading):
- the model file's content (SHA-256; remembered per path, size, mtime, ctime and inode in ``digests.json`` so
  that a multi-GB model is hashed once, not per process),
- the core's calibration identity: the statistics' version, the generic prompts (count and hash), the device
  and the weight layout (``Model.calibration_identity``),
- this package's version and the extension module's content, llama-cpp-python's version (ggml's arithmetic),
- this file format's version.
Each entry is one adapter matrix's statistic, keyed by the matrix's content hash (shape, values, scale, block,
module) and the signal variant (signal, probe position, squared). So a changed model, adapter, prompt set,
calibration code or build gets a new entry or file, never an old value.

Safety: a file is written to a temporary file in the same directory and moved into place (``os.replace``:
readers see the old or the new file, never half of one); writers merge under a file lock (``filelock``), so
concurrent processes add to, never erase, each other's statistics. A file that is truncated, corrupt (its
SHA-256 checksum fails), of another format or key, or holds a non-finite value is ignored as a whole and
rewritten. A cache dir that cannot be written (read-only, full) costs a warning and the statistics are
computed per process as without the cache. At most MAX_FILES files (least recently used go first) of at most
MAX_ENTRIES statistics each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import weakref
from importlib import metadata
from pathlib import Path
from typing import Optional, Union

import filelock
import platformdirs

from . import _build_config, _core

log = logging.getLogger("logo_cpp")

FORMAT = 1                 # of the files below; a change makes every old file foreign
ENV_DIR = "LOGO_CPP_CACHE_DIR"
ENV_OFF = "LOGO_CPP_NO_CACHE"
MAX_FILES = 64             # statistics files (one per model identity) kept in a cache dir
MAX_ENTRIES = 100_000      # statistics per file (~10 MB of JSON): 18 adapters x 8 blocks are 144
MAX_FILE_BYTES = 32 << 20  # larger files are not read (a cache never holds one)
MAX_DIGESTS = 256          # remembered file digests
LOCK_TIMEOUT = 5.0         # seconds a writer waits for another one's merge before giving up its own

CacheSetting = Union[str, "os.PathLike[str]", bool, None]


def cache_dir(setting: CacheSetting = None) -> Optional[Path]:
    """The cache directory ``setting`` asks for, or None when the disk cache is off.

    ``setting``: a path (str or PathLike) is used as given; False turns the cache off; None or True means the
    environment's choice: ``LOGO_CPP_NO_CACHE`` set to anything but "", "0", "false", "no" turns it off,
    ``LOGO_CPP_CACHE_DIR`` names the directory, else ``platformdirs.user_cache_dir("logo-cpp")``.
    Raises TypeError for other types."""
    if setting is False:
        return None
    if setting is None or setting is True:
        if os.environ.get(ENV_OFF, "").strip().lower() not in ("", "0", "false", "no"):
            return None
        chosen = os.environ.get(ENV_DIR, "")
        return Path(chosen).expanduser() if chosen else Path(platformdirs.user_cache_dir("logo-cpp", appauthor=False))
    if isinstance(setting, (str, os.PathLike)):
        if not os.fspath(setting):
            raise ValueError("cache_dir is an empty path; give a directory, or False for no disk cache")
        return Path(setting).expanduser()
    raise TypeError(f"cache_dir must be a path, True/None (the default location) or False (off), "
                    f"got {type(setting).__name__}")


# -- file digests ------------------------------------------------------------------------------------

def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, payload) -> None:
    """Writes ``payload`` as JSON to a temporary file beside ``path``, then moves it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_json(path: Path):
    """The JSON in ``path``, or None when it is absent, too large or not JSON."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            log.info("calibration cache: %s is larger than %d bytes; ignored", path, MAX_FILE_BYTES)
            return None
        return json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        log.info("calibration cache: %s is unreadable (%s); ignored", path, exc)
        return None


def file_digest(path: str, directory: Optional[Path]) -> str:
    """SHA-256 of a file's content, remembered in ``directory/digests.json`` by the file's path, size, mtime,
    ctime and inode (any write changes ctime), so a large model is read once, not per process."""
    key = _stat_key(path)
    memo_path = directory / "digests.json" if directory is not None else None
    memo = _read_json(memo_path) if memo_path is not None else None
    if not isinstance(memo, dict) or memo.get("format") != FORMAT or not isinstance(memo.get("files"), dict):
        memo = {"format": FORMAT, "files": {}}
    known = memo["files"].get(key)
    if isinstance(known, str) and len(known) == 64:
        return known
    digest = _sha256(path)
    if key != _stat_key(path):  # written while we read it: this digest describes no stable content
        raise OSError(f"'{path}' changed while it was being hashed")
    if memo_path is not None:
        files = memo["files"]
        files[key] = digest
        while len(files) > MAX_DIGESTS:
            files.pop(next(iter(files)))  # the oldest insertion first
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(memo_path, memo)
        except OSError:
            pass  # a read-only cache dir: the digest is recomputed next time; the caller warns about the dir
    return digest


# -- statistics files --------------------------------------------------------------------------------

_SIGNALS = ("norm", "entropy", "arrow")
_POSITIONS = ("last", "mean")


def _checksum(key: dict, entries: list) -> str:
    canonical = json.dumps([key, entries], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _valid_entry(e) -> bool:
    return (isinstance(e, list) and len(e) == 6
            and isinstance(e[0], str) and len(e[0]) == 16 and all(c in "0123456789abcdef" for c in e[0])
            and e[1] in _SIGNALS and e[2] in _POSITIONS and isinstance(e[3], bool)
            and all(isinstance(v, float) and math.isfinite(v) for v in e[4:6]) and e[5] >= 0.0)


def read_entries(path: Path, key: dict) -> Optional[list]:
    """The entries of the statistics file ``path`` if it is whole and made for ``key``, else None."""
    doc = _read_json(path)
    if doc is None:
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        log.info("calibration cache: %s is not a format-%d statistics file; ignored", path, FORMAT)
        return None
    entries = doc.get("entries")
    if doc.get("key") != key or not isinstance(entries, list):
        log.info("calibration cache: %s was made for another model, build or prompt set; ignored", path)
        return None
    if doc.get("checksum") != _checksum(key, entries) or not all(_valid_entry(e) for e in entries):
        log.info("calibration cache: %s is corrupt (checksum or values); ignored", path)
        return None
    return entries


def _as_entry(stat) -> list:
    matrix, signal, position, squared, mean, std = stat
    return [f"{matrix:016x}", signal, position, bool(squared), float(mean), float(std)]


def _as_stat(entry) -> tuple:
    return (int(entry[0], 16), entry[1], entry[2], entry[3], entry[4], entry[5])


def _entry_id(entry) -> tuple:
    return (entry[0], entry[1], entry[2], entry[3])


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # another process removed it first, or the directory is read-only: the bound is kept next time


def _prune(directory: Path, keep: Path) -> None:
    """Leaves at most MAX_FILES statistics files, removing the least recently used (by mtime) first, with
    their lock files; and temporary files that a writer killed mid-write left behind (older than an hour)."""
    def mtime(p: Path) -> int:
        try:
            return p.stat().st_mtime_ns
        except OSError:
            return 0
    files = [p for p in directory.glob("*.json") if p != keep]
    if len(files) >= MAX_FILES:
        files.sort(key=mtime)
        for p in files[: len(files) - MAX_FILES + 1]:
            _unlink(p)
            _unlink(Path(str(p) + ".lock"))
    hour_ago = time.time_ns() - 3600 * 10**9
    for p in directory.glob("*.tmp"):
        if mtime(p) < hour_ago:
            _unlink(p)


def _llama_cpp_version() -> str:
    """Which ggml computes the statistics: llama-cpp-python's version (the build links its libraries)."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return f"not installed (linked against {_build_config.LINKED_AGAINST})"


class _ModelCache:
    """The disk cache of one Model in one directory: loads once, saves what the model computed since."""

    def __init__(self, model, directory: Path):
        self._model = weakref.ref(model)
        self.directory = directory
        self._lock = threading.Lock()
        self._key: Optional[dict] = None
        self._path: Optional[Path] = None
        self._loaded = False
        self._saved = 0          # how many statistics the model held when they were last on disk
        self._disabled = False   # after a failure to write: stop trying in this process

    def _identity(self, model) -> None:
        core_file = _core.__file__
        self._key = {
            "model_sha256": file_digest(model.path, self.directory),
            "core": model._core.calibration_identity,
            "logo_cpp": _build_config.VERSION,
            "extension_sha256": file_digest(core_file, self.directory),
            "llama_cpp_python": _llama_cpp_version(),
        }
        name = hashlib.sha256(json.dumps(self._key, sort_keys=True).encode("utf-8")).hexdigest()[:32]
        self._path = self.directory / "calibration" / f"{name}.json"

    def load(self) -> int:
        """Gives the model the statistics on disk for it (once); returns how many."""
        with self._lock:
            if self._loaded:
                return 0
            self._loaded = True
            model = self._model()
            if model is None:
                return 0
            if getattr(model, "_file_changed", lambda: False)():
                log.warning("calibration cache: %s changed on disk since it was loaded; the disk cache is not "
                            "used for it in this process", model.path)
                self._disabled = True
                return 0
            try:
                self._identity(model)
            except OSError as exc:
                log.warning("calibration cache: cannot identify %s (%s); statistics are computed in this process "
                            "only", model.path, exc)
                self._disabled = True
                return 0
            entries = read_entries(self._path, self._key)
            if not entries:
                return 0
            try:
                model._core.add_calibration_stats([_as_stat(e) for e in entries])
            except (ValueError, TypeError, OverflowError) as exc:
                log.info("calibration cache: %s holds statistics the model refused (%s); ignored", self._path, exc)
                return 0
            self._saved = model._core.calibration_cache_entries
            try:
                os.utime(self._path)  # recently used: pruned last
            except OSError:
                pass
            return len(entries)

    def save(self) -> bool:
        """Writes the model's statistics if it computed new ones since the last load or save; True if written."""
        with self._lock:
            model = self._model()
            if model is None or self._disabled or self._path is None:
                return False
            if model._core.calibration_cache_entries == self._saved:
                return False
            stats = model._core.calibration_stats()
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with filelock.FileLock(str(self._path) + ".lock", timeout=LOCK_TIMEOUT):
                    merged = {_entry_id(e): e for e in (read_entries(self._path, self._key) or [])}
                    ours = [_as_entry(s) for s in stats]
                    for e in ours:
                        merged.pop(_entry_id(e), None)
                    # This process's statistics first, then as many of the others as fit.
                    entries = (ours + list(merged.values()))[:MAX_ENTRIES]
                    # An absolute path: `logo-cpp cache` lists it from any directory.
                    doc = {"format": FORMAT, "key": self._key, "model": os.path.abspath(model.path), "entries": entries,
                           "checksum": _checksum(self._key, entries)}
                    _write_json_atomic(self._path, doc)
                _prune(self._path.parent, self._path)
            except (OSError, filelock.Timeout) as exc:
                log.warning("calibration cache: cannot write %s (%s); statistics are computed per process. Set %s "
                            "to a writable directory, or %s=1 to turn the cache off.", self.directory, exc,
                            ENV_DIR, ENV_OFF)
                self._disabled = True
                return False
            self._saved = len(stats)
            return True


_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def for_model(model, setting: CacheSetting = None) -> Optional[_ModelCache]:
    """The disk cache of ``model`` that ``setting`` (see cache_dir) asks for, shared by every router of the
    model that asks for the same directory; None when the cache is off."""
    directory = cache_dir(setting)
    if directory is None:
        return None
    with _caches_lock:
        per_model = _caches.setdefault(model, {})
        key = os.path.abspath(directory)
        if key not in per_model:
            per_model[key] = _ModelCache(model, directory)
        return per_model[key]


# -- inspection ----------------------------------------------------------------------------------------

def describe(directory: Path) -> dict:
    """What a cache dir holds: {"directory", "files", "entries", "bytes", "models": [{"model", "entries", "file"}],
    "unreadable": [file, ...]}. "unreadable" lists the statistics files that are not whole (corrupt, truncated,
    another format): routing ignores and rewrites them; they count in "bytes" only."""
    out = {"directory": str(directory), "files": 0, "entries": 0, "bytes": 0, "models": [], "unreadable": []}
    for p in sorted(directory.glob("calibration/*.json")) + [directory / "digests.json"]:
        try:
            out["bytes"] += p.stat().st_size
        except OSError:
            continue
        if p.parent.name != "calibration":
            continue
        doc = _read_json(p)
        if isinstance(doc, dict) and isinstance(doc.get("key"), dict) and \
                read_entries(p, doc["key"]) is not None:
            out["files"] += 1
            out["entries"] += len(doc["entries"])
            out["models"].append({"model": str(doc.get("model")), "entries": len(doc["entries"]), "file": str(p)})
        else:
            out["unreadable"].append(str(p))
    return out


def clear(directory: Path) -> int:
    """Deletes the cache's files in ``directory`` (statistics, their locks, temporary files, the digests);
    returns how many. Other files there are left alone. Raises OSError when one cannot be deleted."""
    removed = 0
    for pattern in ("calibration/*.json", "calibration/*.json.lock", "calibration/*.tmp", "digests.json",
                    "digests.json.*.tmp"):
        for p in directory.glob(pattern):
            p.unlink()
            removed += 1
    return removed

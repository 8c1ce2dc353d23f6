"""Where outputs go: the one rule for a study name that becomes a folder, and writable-folder checks.

Study names come from ablation files and, for `--report`, from a store that other people
or programs may have written to (a shared PostgreSQL database). A name is used as one path
component, so it may not climb out of the results directory or name another place.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

from attnbench.core.errors import ConfigError

MAX_NAME_BYTES = 200  # below the 255 bytes of a file name on common file systems, leaving room for suffixes
ALLOWED = ("a study name usable as one folder name: not empty, not '.' or '..', no '/' or '\\', "
           f"no control characters, at most {MAX_NAME_BYTES} bytes")


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a study folder, or None when it can."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if name in (".", ".."):
        return "the current or the parent folder"
    if "/" in name or "\\" in name:
        return "a path, not a name (it has a separator)"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return "it has a control character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return "too long"
    return None


def check_study_name(key: str, name: Any) -> str:
    """`name` if it is a usable study name, else ConfigError naming `key`."""
    problem = name_problem(name)
    if problem is not None:
        raise ConfigError(key, name, f"{ALLOWED} ({problem})")
    return name


def study_dir(results: Path, name: str, key: str = "study") -> Path:
    """The export folder of study `name` under `results`, refusing any name that would leave it."""
    folder = results / check_study_name(key, name)
    if folder.resolve().parent != results.resolve():  # a symlinked results/<name> pointing elsewhere
        raise ConfigError(key, name, f"a folder inside {results} (results/{name} points outside it)")
    return folder


def check_writable(folder: Path, key: str = "results") -> Path:
    """Create `folder` if needed and prove it takes a file, before anything is measured; ConfigError naming it if not."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(key, str(folder), "a folder (this path is a file)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(key, str(folder), f"a writable directory ({error.strerror or error})") from None
    return folder

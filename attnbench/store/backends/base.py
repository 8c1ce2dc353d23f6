"""What a storage backend is: a URL scheme, a way to open it, and a store the contract tests can use."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

from optuna.storages import BaseStorage

from attnbench.core.registry import Registry


class Backend:
    """One kind of store. Subclasses set `scheme` (and `heartbeats`) and override `claims`, `open`, `test_url`.

    Registering a backend (`@register_backend`, in a file of this package) is all it takes for
    the storage contract suite (tests/test_storage_contract.py) to run every test on it.
    """

    scheme: ClassVar[str]
    heartbeats: ClassVar[bool] = False  # whether a running trial's liveness is a heartbeat (else a pid or a lease)
    example: ClassVar[str] = ""  # the URL form, as an error line names it
    untested_because: ClassVar[str] = ""  # why `test_url` may give None on this machine
    order: ClassVar[int] = 50  # where error lines list its URL form

    def claims(self, url: str) -> bool:
        """Whether `url` names a store of this backend."""
        return url.split(":", 1)[0].split("+", 1)[0] == self.scheme

    def open(self, url: str, retry_stale: bool) -> BaseStorage:
        """The Optuna storage; ConfigError("storage", ...) with the password hidden when it cannot be opened."""
        raise NotImplementedError

    def test_url(self, tmp_path: Path) -> str | None:
        """A fresh, empty store for one test under `tmp_path`, or None where none is available here."""
        raise NotImplementedError


BACKENDS: Registry[Backend] = Registry("storage")
B = TypeVar("B", bound=type[Backend])


def register_backend(cls: B) -> B:
    """Class decorator: register one instance of the backend under its scheme."""
    BACKENDS.add(cls.scheme, cls())
    return cls

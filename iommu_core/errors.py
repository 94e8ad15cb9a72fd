"""Kernel-side errors: an errno and a message, turned into OSError at the syscall boundary."""

from __future__ import annotations

import errno as _errno
import os
from typing import NoReturn


class IommuError(Exception):
    """A failed kernel operation: ``-errno`` in C, this exception in the simulation.

    Raised anywhere below the syscall boundary; the Machine converts it into
    ``OSError(errno, message)``. Nothing else may cross that boundary for bad input.
    """

    __slots__ = ("errno", "msg")

    def __init__(self, err: int, msg: str = "") -> None:
        self.errno = err
        self.msg = msg or os.strerror(err)
        super().__init__(err, self.msg)

    def __str__(self) -> str:
        return f"[{_errno.errorcode.get(self.errno, self.errno)}] {self.msg}"

    def to_oserror(self) -> OSError:
        return OSError(self.errno, self.msg)


def fail(err: int, msg: str = "") -> NoReturn:
    """Raise :class:`IommuError` (the simulation's ``return -err``)."""
    raise IommuError(err, msg)

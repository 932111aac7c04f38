"""``torch.save`` files: written atomically with their size checked against the free space, read
safely (``weights_only=True``) with a one-line reason on failure."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from .atomic import write_bytes
from .errors import InputError


class UnreadableFile(InputError, ValueError):  # noqa: N818 - reads as "the file is unreadable: <reason>"
    """A file torch.load(weights_only=True) cannot read; the message is one short line."""


def load_tensors(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU. Failures become UnreadableFile
    whose message completes "<what> <path> ...": "does not exist" or "is corrupt or not a
    torch file (<reason>)"."""
    if not Path(path).is_file():
        raise UnreadableFile("does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable for any reason
        text = str(exc)
        marker = "WeightsUnpickler error:"
        if marker in text:  # torch's message is a page of advice; the reason follows the marker
            text = "not a plain file of tensors: " + text.split(marker, 1)[1].strip()
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        reason = first.split(". ")[0].rstrip(".")
        raise UnreadableFile(f"is corrupt or not a torch file ({reason})") from exc


def save_tensors(payload: Any, path: str | os.PathLike) -> Path:
    """``torch.save(payload)`` to ``path`` atomically; serialised in memory first, so a disk
    too full for it is refused before anything is written (``atomic.DiskFullError``)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes(path, buffer.getvalue())

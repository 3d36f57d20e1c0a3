"""The engine's API key: read from the environment where autotuner runs, never written anywhere.

genai-bench writes the key in plain text into its log (it logs every option) and its
experiment_metadata.json, and no option avoids that: whatever holds a trial's files is scrubbed.
"""

from __future__ import annotations

import os
from pathlib import Path

API_KEY_ENV = "AUTOTUNER_API_KEY"  # the engine's API key, if it wants one
MASK = b"***"


def api_key() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


def scrubbed(data: bytes) -> bytes:
    """`data` with the API key masked."""
    key = (api_key() or "").encode()
    return data.replace(key, MASK) if key else data


def scrub_folder(folder: Path) -> None:
    """Mask the API key in every file under `folder`, in place. A file (or folder) that goes while
    this runs held nothing left to mask: skipped, never an error that would hide the caller's."""
    if not api_key():
        return
    for root, _, names in os.walk(folder):  # os.walk skips folders that vanish
        for name in names:
            path = Path(root, name)
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
                clean = scrubbed(data)
                if clean != data:
                    path.write_bytes(clean)
            except FileNotFoundError:
                continue

"""Where a profile's model lives on disk: a local folder, or a repo id in the HF cache."""

from __future__ import annotations

import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(value: str) -> bool:
    return bool(_REPO_ID.match(value)) and not value.startswith(("./", "../"))


def resolve_model_folder(model_path: str, cache_dir: Path | None) -> Path | None:
    """The folder to load: the path itself when it is a folder, else the repo's cached snapshot.

    Never touches the network (local_files_only), so a missing model is reported, not fetched.
    """
    if not model_path:
        return None
    local = Path(model_path).expanduser()
    if local.is_dir():
        return local.resolve()
    if not looks_like_repo_id(model_path):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            model_path,
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=True,
        )
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
    return Path(folder)

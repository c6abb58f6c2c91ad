"""The Hugging Face Hub upload of a merged model: the repo id's shape, the checks that can fail before a merge
(offline mode, no token), and the upload itself. The token is huggingface_hub's (HF_TOKEN or the login cache); this
module never reads or writes it.

Example:
    >>> is_hub_id("you/qwen1.5b-pi1"), is_hub_id("runs/x/adapter/"), is_hub_id("not a repo")
    (True, False, False)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lowrank_rlvr.errors import UserError, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # 'owner/name', as the Hub accepts it


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hub repo id ('owner/name'); a local path may have it too."""
    return bool(HUB_ID.match(name))


def check_repo_id(repo_id: str) -> None:
    """`--push-to-hub` must name a repo as 'owner/name'."""
    if not is_hub_id(repo_id):
        raise UserError(f"--push-to-hub {repo_id!r}: expected a Hub repo id like 'your-name/model-name'")


def check_hub_ready(repo_id: str) -> None:
    """Fail before the merge, not after it, when an upload cannot happen: bad repo id, offline mode, no token."""
    from huggingface_hub import constants, get_token

    check_repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise UserError("--push-to-hub: HF_HUB_OFFLINE=1 is set; unset it to upload")
    if get_token() is None:
        raise UserError("--push-to-hub: no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def upload(folder: Path, repo_id: str, private: bool = False) -> dict[str, Any]:
    """Create (or reuse) the model repo and upload the folder. A failure is a UserError that says why and that the
    local export is intact. Returns {"hub_url": the repo's URL}."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="model", commit_message="Upload merged model (lowrank-rlvr)"
        )
    except Exception as exc:  # noqa: BLE001 - network, auth, permissions, quota: all reported the same way
        raise UserError(
            f"upload to {repo_id} failed ({type(exc).__name__}: {first_line(exc)}); the merged model is intact in "
            f"{folder}; retry with: hf upload {repo_id} {folder}"
        ) from None
    return {"hub_url": str(repo_url)}

"""Writing to a Hub repo: one commit per change, conditional on the commit it was prepared on (`parent_commit`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, constants
from huggingface_hub.errors import HfHubHTTPError

from ..errors import ConcurrentUpdateError
from ..manifest import REMOVAL_FILES
from .download import api, head
from .options import HubOptions

logger = logging.getLogger(__name__)


def prepare_repo(repo_id: str, options: HubOptions, *, branch: str | None = None, private: bool = False) -> str:
    """Creates the repo (and `branch`, from `main`) if needed; returns the commit the branch points to."""
    client = api(options)
    client.create_repo(repo_id, private=private, exist_ok=True)
    if branch and branch != constants.DEFAULT_REVISION:
        client.create_branch(repo_id, branch=branch, exist_ok=True)
    return head(repo_id, options, branch=branch)


def is_removal_file(path_in_repo: str) -> bool:
    """Whether a repo file belongs to the removals a commit here replaces (under `adapters/`, or at the root)."""
    return path_in_repo.startswith("adapters/") or path_in_repo in REMOVAL_FILES


def commit_files(
    repo_id: str,
    files: Mapping[str, Path | bytes],
    *,
    options: HubOptions,
    parent_commit: str,
    message: str,
    branch: str | None = None,
    keep: Iterable[str] = (),
) -> CommitInfo:
    """One commit on `branch` that adds `files` and deletes the removal files it neither adds nor `keep`s.

    Args:
        repo_id (`str`): The repo.
        files (`Mapping[str, Path | bytes]`): Path in the repo -> a local file or the bytes to write.
        options ([`HubOptions`]): Token and endpoint.
        parent_commit (`str`): The commit the change was prepared on: the Hub refuses the commit if the branch
            moved since.
        message (`str`): The commit message.
        branch (`str`, *optional*): Default `"main"`.
        keep (`Iterable[str]`): Removal files already in the repo that stay as they are.

    Raises:
        ConcurrentUpdateError: The branch no longer points to `parent_commit` (the Hub answers 412); nothing was
            written.
    """
    branch = branch or constants.DEFAULT_REVISION
    client = api(options)
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path, data if isinstance(data, bytes) else str(data)) for path, data in files.items()
    ]
    kept = set(keep) | set(files)
    current = client.list_repo_files(repo_id, revision=parent_commit)
    operations += [CommitOperationDelete(p) for p in sorted(current) if is_removal_file(p) and p not in kept]
    try:
        info = client.create_commit(
            repo_id, operations, commit_message=message, revision=branch, parent_commit=parent_commit
        )
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code == 412:
            raise ConcurrentUpdateError(
                f"{repo_id!r} (branch {branch!r}) moved past {parent_commit[:10]} while this update was prepared: "
                "another push or append landed first, and nothing was written. Call "
                "`diffusers_unlearn.workflows.append(..., retry=True)` to re-apply an append on the new head, or "
                "pull the removals again and re-check them.",
                repo_id=repo_id,
                parent_commit=parent_commit,
            ) from error
        raise
    logger.info("Committed %d file(s) to %s@%s (commit %s)", len(files), repo_id, branch, info.oid)
    return info


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    options: HubOptions,
    message: str,
    branch: str | None = None,
    private: bool = False,
    parent_commit: str | None = None,
) -> CommitInfo:
    """Uploads every file of `folder` in one commit, replacing the removals the branch held (other files stay).

    Raises:
        ConcurrentUpdateError: The branch is not at `parent_commit` (when given), or moved while uploading.
    """
    current = prepare_repo(repo_id, options, branch=branch, private=private)
    if parent_commit is not None and parent_commit != current:
        raise ConcurrentUpdateError(
            f"{repo_id!r} (branch {branch or constants.DEFAULT_REVISION!r}) is at {current[:10]}, not at the "
            f"expected {parent_commit[:10]}: it changed since you read it. Pull it again and re-apply your change.",
            repo_id=repo_id,
            parent_commit=parent_commit,
        )
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return commit_files(repo_id, files, options=options, parent_commit=current, message=message, branch=branch)

"""`HubMixin`: `save_pretrained`, `from_pretrained` and `push_to_hub` for the classes whose files are removals.

As `huggingface_hub.ModelHubMixin` does, a class implements two hooks, `_save_pretrained(folder)` and
`_from_pretrained(folder, options)`; the mixin adds the local-or-Hub decision (one resolver, [`download`]) and
the push (save to a temporary folder with its model card, then one commit, [`push_folder`]).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, Unpack

from ..errors import InvalidArgumentError, InvalidTypeError
from ..manifest import read_manifest
from .card import CARD_NAME, model_card
from .commit import push_folder
from .download import download
from .options import HubKwargs, HubOptions, write_options

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from ..adapter import UnlearningAdapter
    from ..interference import InterferenceReport


class HubMixin:
    """Gives a class of removals `save_pretrained`, `from_pretrained` and `push_to_hub`.

    Subclasses implement `_save_pretrained(folder)` (write the files, manifest included), `_from_pretrained(folder,
    options)` (read them back, verified) and `_removals()` (what the model card lists).
    """

    # ------------------------------------------------------------------------------------------- hooks
    def _save_pretrained(self, save_directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _from_pretrained(cls, folder: Path, options: HubOptions) -> Self:
        raise NotImplementedError

    def _removals(self) -> list[UnlearningAdapter]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ public
    def save_pretrained(
        self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **push_kwargs: Any
    ) -> Path:
        """Writes the files to a folder (created if needed); with `push_to_hub=True`, also publishes them.

        Args:
            save_directory (`str` or `os.PathLike`): The folder.
            push_to_hub (`bool`, defaults to `False`): Also call [`push_to_hub`], to `push_kwargs["repo_id"]`
                (default: the folder's name), as diffusers' `save_pretrained` does.
            push_kwargs: Passed to [`push_to_hub`].

        Returns:
            `Path`: the folder.
        """
        folder = Path(save_directory)
        self._save_pretrained(folder)
        if push_to_hub:
            self.push_to_hub(push_kwargs.pop("repo_id", folder.resolve().name), **push_kwargs)
        elif push_kwargs:
            raise InvalidTypeError(
                f"save_pretrained got {sorted(push_kwargs)}, which only apply with push_to_hub=True."
            )
        return folder

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs: Unpack[HubKwargs]
    ) -> Self:
        """Reads a folder written by `save_pretrained`, or pulls a Hub repo written by `push_to_hub`.

        Every file is checked against the sha256 its manifest records before it is parsed; files kept in other
        repos are fetched at their pinned commit.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A local folder (or its manifest), or a Hub
                repo id (`"org/name"`).
            hub_kwargs: [`HubOptions`]: `revision` (branch, tag or commit; default `"main"`), `token`,
                `cache_dir`, `local_files_only`, `endpoint`.

        Raises:
            AdapterNotFoundError: Nothing there, no such repo or revision, or not cached while offline.
            AdapterFormatError: A file does not match its sha256, or is not a valid removal or manifest.
        """
        options = HubOptions.of(hub_kwargs)
        return cls._from_pretrained(download(pretrained_model_name_or_path, options), options)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        branch: str | None = None,
        private: bool = False,
        commit_message: str | None = None,
        parent_commit: str | None = None,
        report: InterferenceReport | None = None,
        **hub_kwargs: Unpack[HubKwargs],
    ) -> CommitInfo:
        """Publishes the files in one commit: what `save_pretrained` writes, plus a model card.

        The repo (and `branch`) is created if needed. The removals the branch held are replaced; other files stay,
        and the git history keeps the earlier ones (pull them by commit).

        Args:
            repo_id (`str`): `"org/name"`.
            branch (`str`, *optional*): Branch to push to; default `"main"`.
            private (`bool`, defaults to `False`): Create the repo private.
            commit_message (`str`, *optional*): Default `"Publish <name>"` / `"Publish <n> removals"`.
            parent_commit (`str`, *optional*): Write only if the branch still points to this commit.
            report ([`InterferenceReport`], *optional*): Interference check shown in the card (`stack.check(pipe)`).
            hub_kwargs: [`HubOptions`]: `token` (with write access; default the stored one), `endpoint`.

        Returns:
            `huggingface_hub.CommitInfo`: the commit (`.oid`: pin it when loading).

        Raises:
            ConcurrentUpdateError: The branch moved past `parent_commit`; nothing was written.

        Example:
            ```py
            >>> info = stack.push_to_hub("org/no-sevens", report=stack.check(pipe))
            >>> pipe.load_unlearning("org/no-sevens", revision=info.oid)
            ```
        """
        options, branch = write_options(hub_kwargs, branch)
        removals = self._removals()
        if not removals:
            raise InvalidArgumentError("Nothing to push: there is no removal.")
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            self._save_pretrained(folder)
            card = model_card(removals, repo_id=repo_id, entries=read_manifest(folder)["entries"], report=report)
            (folder / CARD_NAME).write_text(str(card))
            message = commit_message or (
                f"Publish {removals[0].name}" if len(removals) == 1 else f"Publish {len(removals)} removals"
            )
            return push_folder(
                folder,
                repo_id,
                options=options,
                message=message,
                branch=branch,
                private=private,
                parent_commit=parent_commit,
            )

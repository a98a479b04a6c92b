"""Keeps known third-party notices out of what our own calls print, and nothing else.

Each notice is named by the logger that emits it and a fragment of its text; [`quiet`] drops exactly those
records, and only while our call runs: the same notice raised by the user's own code still shows, and no
logger's level is changed.

Example:
    ```py
    >>> from diffusers_unlearn.quiet import TORCHVISION_NOTICE, quiet
    >>> with quiet(TORCHVISION_NOTICE):
    ...     from diffusers import StableDiffusionPipeline
    ```
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Notice:
    """A third-party message we trigger on purpose and that says nothing to our users.

    Args:
        logger (`str`): The logger that emits it (`None` for a Python warning).
        fragment (`str`): A piece of its text.
    """

    logger: str | None
    fragment: str


TORCHVISION_NOTICE = Notice("transformers.utils.import_utils", "requires torchvision")
"""transformers 5, when diffusers' Stable Diffusion pipelines import CLIP's image processor without torchvision."""
NO_TEXT_ENCODER_LORA = Notice("diffusers.loaders.lora_base", "No LoRA keys associated to")
"""diffusers, when a LoRA carries only UNet layers (every removal does)."""
NO_TEXT_ENCODER_LORA_PEFT = Notice("diffusers.loaders.peft", "No LoRA keys associated to")
"""The same message from diffusers' model-level loader."""
REQUIRES_GRAD_SCALAR = Notice(None, "Converting a tensor with requires_grad=True")
"""torch, when a weight that requires grad is read as a Python number."""


class _Drop(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextlib.contextmanager
def quiet(*notices: Notice) -> Iterator[None]:
    """Drops the given notices while the block runs (a filter on the emitting logger; a warnings filter)."""
    filters = [(logging.getLogger(n.logger), _Drop(n.fragment)) for n in notices if n.logger is not None]
    messages = [n.fragment for n in notices if n.logger is None]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message in messages:
                warnings.filterwarnings("ignore", message=".*" + re.escape(message))
            yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)

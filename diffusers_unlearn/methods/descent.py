"""Adam on an input of the text path, the one optimisation loop that the attacks and distill's hardening share.

The embedding attack, the learned-token attack and `harden=` with `method="distill"` all move an input (a text
embedding, or one token's input vector) by gradient descent so that an edited model's noise predictions come close
to the untouched model's for the concept. Only the objective and the input differ; the loop is here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def descend(
    start: torch.Tensor,
    loss: Callable[[torch.Tensor], torch.Tensor],
    iterations: int,
    learning_rate: float,
    *,
    scale: float | None = None,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    desc: str = "descend",
    progress: bool = True,
) -> torch.Tensor:
    """Minimises `loss` over a float32 copy of `start` with `iterations` Adam steps.

    Args:
        start (`torch.Tensor`): Where the descent starts (not modified).
        loss (`Callable`): The variable -> a scalar tensor, differentiable with respect to it; called once per
            step, so it may draw a new minibatch each time.
        iterations (`int`): Adam steps.
        learning_rate (`float`): Relative to `scale`.
        scale (`float`, *optional*): The input's scale; default: the RMS of `start`.
        project (`Callable`, *optional*): Applied to the variable after every step (e.g. back into a budget).
        desc (`str`): The progress bar's label.
        progress (`bool`): Show a progress bar.

    Returns:
        `torch.Tensor`: the optimised input, detached, float32.

    Example:
        ```py
        >>> import torch
        >>> from diffusers_unlearn.methods.descent import descend
        >>> target = torch.tensor([1.0, -2.0])
        >>> found = descend(torch.zeros(2), lambda v: (v - target).square().sum(), 300, 0.05, scale=1.0,
        ...                 progress=False)
        >>> bool(torch.allclose(found, target, atol=1e-2))
        True
        ```
    """
    start = start.detach().float()
    if scale is None:
        scale = float(start.square().mean().sqrt())
    variable = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=learning_rate * scale)
    for _ in tqdm(range(iterations), desc=desc, disable=not progress, leave=False):
        (gradient,) = torch.autograd.grad(loss(variable), [variable])
        optimizer.zero_grad()
        variable.grad = gradient
        optimizer.step()
        if project is not None:
            with torch.no_grad():
                variable.copy_(project(variable))
    return variable.detach()

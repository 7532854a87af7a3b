"""The tensors a torch step depends on, as given by the user (``params=``)."""

from __future__ import annotations

from typing import Any

import torch

from pcrsolve.errors import InputError

__all__ = ["param_list"]


def param_list(params: Any) -> list[torch.Tensor]:
    """``params`` (None, a tensor, a sequence of tensors or an nn.Module) as a list.

    Raises
    ------
    InputError
        If an element is not a tensor.
    """
    if params is None:
        return []
    if isinstance(params, torch.nn.Module):
        return [p for p in params.parameters() if p.requires_grad]
    if isinstance(params, torch.Tensor):
        return [params]
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, torch.Tensor):
            raise InputError(
                f"`params[{i}]` must be a torch.Tensor (or pass an nn.Module); "
                f"got {type(p).__name__}"
            )
    return out

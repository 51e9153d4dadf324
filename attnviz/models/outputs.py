"""What a model's output holds: class scores (when it has them) and their top classes.

A model may return a tensor, a tuple, a dict (Hugging Face's ModelOutput is one) or a
segmentation mask; attnviz draws attention for all of them and names classes only when the
output is (N, K) scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnviz.errors import AttnvizError
from attnviz.models.imagenet import imagenet_categories


def logits_of(output: object) -> Tensor:
    """The class scores of a model output that may be a tensor, a tuple or a dict."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        for key in ("logits", "out", "output"):
            if isinstance(output.get(key), Tensor):
                return output[key]
        output = list(output.values())
    if isinstance(output, list | tuple):
        for value in output:
            if isinstance(value, Tensor):
                return value
    raise AttnvizError(f"cannot find class scores in a model output of type {type(output)}")


def not_class_scores(logits: Tensor) -> str | None:
    """Why ``logits`` are not (N, K) class scores (a mask, a map, one score), or None."""
    if logits.dim() == 2 and logits.shape[1] > 1:
        return None
    shape = "×".join(map(str, logits.shape[1:])) or "a scalar"
    return f"the model's output ({shape} per photo) is not class scores (N, K)"


def top_classes(logits: Tensor, k: int = 5) -> list[list[dict[str, object]]]:
    """Each photo's top-k classes; none (empty lists) when the output is not class scores
    (a segmentation mask, a discriminator's score): the manifest says why (``top5_note``)."""
    if not_class_scores(logits) is not None:
        return [[] for _ in range(len(logits))]
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    names = imagenet_categories() if probs.shape[1] == 1000 else None
    return [
        [
            {"index": int(i), "label": names[int(i)] if names else str(int(i)), "prob": float(p)}
            for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
        ]
        for row_p, row_i in zip(values, indices, strict=True)
    ]

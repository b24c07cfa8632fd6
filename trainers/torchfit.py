"""The training loop both demo pipelines share: seeded, deterministic on CPU, epoch callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from trainers.contract import EpochCallback


def serving_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels for the duration of a fit."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def fit_classifier(
    module: nn.Module,
    train: Sequence[torch.Tensor],
    valid: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    on_epoch: EpochCallback,
    valid_metric: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
) -> nn.Module:
    """Fit ``module`` with cross-entropy. The last tensor of ``train``/``valid`` is the label.

    ``module(*features)`` returns class logits. ``valid_metric(logits, labels)`` adds metrics to
    each epoch's report next to ``train_loss`` and ``valid_loss``.
    """
    *train_x, train_y = train
    *valid_x, valid_y = valid
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(seed)
    n = len(train_y)
    for epoch in range(1, epochs + 1):
        module.train()
        total, seen = 0.0, 0
        for idx in torch.split(torch.randperm(n, generator=shuffler), batch_size):
            optimiser.zero_grad()
            loss = loss_fn(module(*(x[idx] for x in train_x)), train_y[idx])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        module.eval()
        with torch.inference_mode():
            logits = batched_logits(module, valid_x, batch_size * 4)
            report = {
                "train_loss": total / max(seen, 1),
                "valid_loss": float(loss_fn(logits, valid_y)),
                **valid_metric(logits, valid_y),
            }
        on_epoch(epoch, report)
    module.eval()
    return module


def batched_logits(module: nn.Module, xs: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Run ``module`` over ``xs`` in chunks and concatenate the logits."""
    n = len(xs[0])
    chunks = [module(*(x[i : i + batch_size] for x in xs)) for i in range(0, max(n, 1), batch_size)]
    return torch.cat(chunks) if n else torch.empty(0, 2)

"""What the torch pipelines share: a seeded training loop that is deterministic on CPU and
reports every epoch, and predictor files as safetensors weights plus JSON state."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from trainers.contract import EpochCallback, PipelineParams

WEIGHTS = "model.safetensors"
STATE = "preprocessor.json"


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


class TorchParams(PipelineParams):
    """Optimiser settings shared by the torch pipelines here (each may change the defaults)."""

    batch_size: int = Field(default=64, ge=1, le=65536)
    lr: float = Field(default=1e-3, gt=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def fit_classifier(
    build: Callable[[], ModuleT],
    train: Sequence[torch.Tensor],
    valid: Sequence[torch.Tensor],
    *,
    params: TorchParams,
    on_epoch: EpochCallback,
    valid_metric: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
) -> ModuleT:
    """Seed, ``build()`` the module and fit it with cross-entropy; return it in eval mode.

    The last tensor of ``train``/``valid`` is the label; ``module(*features)`` returns class
    logits. ``valid_metric(logits, labels)`` adds metrics to each epoch's report next to
    ``train_loss`` and ``valid_loss``.
    """
    with deterministic(params.seed):
        module = build()
        _fit(module, train, valid, params=params, on_epoch=on_epoch, valid_metric=valid_metric)
    return module.eval()


def _fit(
    module: nn.Module,
    train: Sequence[torch.Tensor],
    valid: Sequence[torch.Tensor],
    *,
    params: TorchParams,
    on_epoch: EpochCallback,
    valid_metric: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
) -> None:
    *train_x, train_y = train
    *valid_x, valid_y = valid
    optimiser = torch.optim.AdamW(
        module.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(params.seed)
    n = len(train_y)
    batch_size = params.batch_size
    for epoch in range(1, params.epochs + 1):
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


def batched_logits(module: nn.Module, xs: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Run ``module`` over ``xs`` in chunks and concatenate the logits."""
    n = len(xs[0])
    chunks = [module(*(x[i : i + batch_size] for x in xs)) for i in range(0, max(n, 1), batch_size)]
    return torch.cat(chunks) if n else torch.empty(0, 2)


def save_predictor(directory: Path, module: nn.Module, state: dict[str, Any]) -> None:
    """Weights as safetensors and preprocessor/architecture state as JSON; nothing pickled."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(weights, str(directory / WEIGHTS))
    (directory / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))


def read_state(directory: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((directory / STATE).read_text())
    return state


def load_weights(module: ModuleT, directory: Path, device: torch.device) -> ModuleT:
    module.load_state_dict(load_file(str(directory / WEIGHTS)))
    return module.to(device).eval()

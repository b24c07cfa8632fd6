"""Movie reviews → sentiment, with a word vocabulary fitted on the training data and a small
transformer encoder. The GPU anchor size is ``n_layers=6 d_model=512 n_heads=8 d_ff=2048
max_len=128``."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from trainers.contract import BusinessObject, Direction, EpochCallback, Metric, Pipeline, Predictor
from trainers.errors import DataError
from trainers.metrics import accuracy
from trainers.pipelines.reviews.generator import generate
from trainers.torchfit import TorchParams, fit_classifier, load_weights, read_state, save_predictor

Sentiment = Literal["negative", "positive"]
LABELS: tuple[Sentiment, Sentiment] = ("negative", "positive")
PAD, UNK, CLS, SEP = 0, 1, 2, 3
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
_TOKEN = re.compile(r"[a-z0-9']+|[!?.,:;]")


class MovieReview(BusinessObject):
    """A free-text review of a film, with an optional headline."""

    text: str = Field(min_length=1, max_length=5000, pattern=r"\S", description="Review body")
    title: str | None = Field(default=None, max_length=200, description="Optional headline")


class SentimentAnswer(BaseModel):
    sentiment: Sentiment
    positive_probability: float = Field(ge=0, le=1)


class ReviewsParams(TorchParams):
    epochs: int = Field(default=6, ge=0, le=1000)
    batch_size: int = Field(default=64, ge=1, le=65536)
    lr: float = Field(default=1e-3, gt=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    d_model: int = Field(default=64, ge=8, le=4096)
    n_heads: int = Field(default=4, ge=1, le=64)
    n_layers: int = Field(default=2, ge=1, le=48)
    d_ff: int = Field(default=128, ge=8, le=16384)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_len: int = Field(default=128, ge=8, le=4096)
    vocab_size: int = Field(default=30_000, ge=16, le=1_000_000)
    min_freq: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ReviewsParams:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        return self


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Word → id, fitted on training texts and shipped as JSON."""

    def __init__(self, tokens: list[str], max_len: int) -> None:
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.max_len = max_len

    @classmethod
    def fit(cls, texts: Iterable[str], size: int, min_freq: int, max_len: int) -> Vocabulary:
        counts = Counter(tok for text in texts for tok in tokenize(text))
        frequent = sorted(
            (t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t)
        )
        return cls(SPECIALS + frequent[: max(size - len(SPECIALS), 0)], max_len)

    def ids(self, text: str, title: str | None) -> list[int]:
        head = [CLS] + ([self.index.get(t, UNK) for t in tokenize(title)] + [SEP] if title else [])
        body = [self.index.get(t, UNK) for t in tokenize(text)]
        return (head + body)[: self.max_len]

    def encode(
        self, pairs: Sequence[tuple[str, str | None]], pad_to: int | None = None
    ) -> torch.Tensor:
        """Token ids, padded with ``PAD`` to the longest in the batch (or ``pad_to``)."""
        rows = [self.ids(text, title) for text, title in pairs]
        width = pad_to or max((len(r) for r in rows), default=1)
        out = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return torch.from_numpy(out)


class EncoderClassifier(nn.Module):
    """Token + position embeddings → transformer encoder → masked mean pool → 2 logits."""

    def __init__(
        self,
        *,
        vocab: int,
        max_len: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        width = max(int((ids != PAD).sum(1).max()), 1) if ids.numel() else 1
        ids = ids[:, :width]  # drop the columns that are padding in every row
        pad = ids == PAD
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tokens(ids) + self.positions(positions)[None]
        x = self.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        logits: torch.Tensor = self.head(self.norm(pooled))
        return logits


def _architecture(params: ReviewsParams, vocab: int) -> dict[str, int | float]:
    return {
        "vocab": vocab,
        "max_len": params.max_len,
        "d_model": params.d_model,
        "n_heads": params.n_heads,
        "n_layers": params.n_layers,
        "d_ff": params.d_ff,
        "dropout": params.dropout,
    }


def _build(arch: dict[str, int | float]) -> EncoderClassifier:
    return EncoderClassifier(
        vocab=int(arch["vocab"]),
        max_len=int(arch["max_len"]),
        d_model=int(arch["d_model"]),
        n_heads=int(arch["n_heads"]),
        n_layers=int(arch["n_layers"]),
        d_ff=int(arch["d_ff"]),
        dropout=float(arch["dropout"]),
    )


class ReviewsPredictor(Predictor[MovieReview, SentimentAnswer]):
    def __init__(
        self, vocabulary: Vocabulary, module: EncoderClassifier, arch: dict[str, int | float]
    ) -> None:
        self.vocabulary = vocabulary
        self.arch = arch
        self.device = next(module.parameters()).device
        self.module = module.eval()

    def preprocess(self, inputs: Sequence[MovieReview]) -> torch.Tensor:
        return self.vocabulary.encode([(x.text, x.title) for x in inputs])

    def forward(self, features: torch.Tensor) -> list[float]:
        ids = features.to(self.device, non_blocking=True)
        with torch.inference_mode():
            probs: list[float] = torch.softmax(self.module(ids).float(), dim=1)[:, 1].tolist()
        return probs

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each part is padded to its own longest text: pad all to the widest, then stack."""
        width = max(part.shape[1] for part in parts)
        return torch.cat([nn.functional.pad(p, (0, width - p.shape[1]), value=PAD) for p in parts])

    def postprocess(self, raw: list[float], inputs: Sequence[MovieReview]) -> list[SentimentAnswer]:
        return [
            SentimentAnswer(sentiment=LABELS[int(p >= 0.5)], positive_probability=p) for p in raw
        ]

    def save(self, directory: Path) -> None:
        state = {"vocabulary": self.vocabulary.tokens, "architecture": self.arch}
        save_predictor(directory, self.module, state)


class ReviewsPipeline(Pipeline[MovieReview, SentimentAnswer, ReviewsParams]):
    name = "reviews"
    input_key = "review"
    target = "sentiment"
    metric = Metric("accuracy", Direction.MAXIMIZE)
    Input = MovieReview
    Output = SentimentAnswer
    Params = ReviewsParams

    def generate(self, rows: int, shift: float, seed: int) -> pd.DataFrame:
        return generate(rows, shift, seed)

    def target_kind(self) -> str:
        return "string"

    def validate_frame(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        frame = super().validate_frame(frame, source)
        bad = sorted(set(frame[self.target]) - set(LABELS))
        if bad:
            raise DataError(
                f"{source}: column {self.target!r} has {bad[:5]}; valid: {list(LABELS)}"
            )
        return frame

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        params: ReviewsParams,
        on_epoch: EpochCallback,
    ) -> ReviewsPredictor:
        vocabulary = Vocabulary.fit(
            _texts(train), params.vocab_size, params.min_freq, params.max_len
        )

        def tensors(frame: pd.DataFrame) -> list[torch.Tensor]:
            ids = vocabulary.encode(_pairs(frame), pad_to=params.max_len)
            labels = (frame[self.target] == "positive").to_numpy(dtype=np.int64)
            return [ids, torch.from_numpy(labels)]

        def valid_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
            return {"valid_accuracy": accuracy(labels.numpy(), logits.argmax(1).numpy())}

        arch = _architecture(params, len(vocabulary.tokens))
        module = fit_classifier(
            lambda: _build(arch),
            tensors(train),
            tensors(valid),
            params=params,
            on_epoch=on_epoch,
            valid_metric=valid_accuracy,
        )
        return ReviewsPredictor(vocabulary, module, arch)

    def load_predictor(self, directory: Path, device: torch.device) -> ReviewsPredictor:
        state = read_state(directory)
        arch = state["architecture"]
        vocabulary = Vocabulary(state["vocabulary"], int(arch["max_len"]))
        return ReviewsPredictor(vocabulary, load_weights(_build(arch), directory, device), arch)

    def evaluate(self, frame: pd.DataFrame, outputs: Sequence[SentimentAnswer]) -> float:
        return accuracy(frame[self.target].to_numpy(), [o.sentiment for o in outputs])

    def features(
        self, inputs: pd.DataFrame, predictor: Predictor[MovieReview, SentimentAnswer]
    ) -> pd.DataFrame:
        """Text descriptors: length, words, title present, and the share of words outside the
        training vocabulary (new topics and slang show up there first)."""
        assert isinstance(predictor, ReviewsPredictor)
        index = predictor.vocabulary.index
        words = inputs["text"].astype(str).map(tokenize)
        return pd.DataFrame(
            {
                "text_length": inputs["text"].astype(str).str.len(),
                "word_count": words.map(len),
                "oov_share": words.map(
                    lambda ws: sum(w not in index for w in ws) / max(len(ws), 1)
                ),
                "has_title": inputs["title"].notna().astype(int),
            }
        )


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str | None]]:
    titles = frame["title"].astype(object).where(frame["title"].notna(), None)
    return list(zip(frame["text"].tolist(), titles.tolist(), strict=True))


def _texts(frame: pd.DataFrame) -> Iterable[str]:
    for text, title in _pairs(frame):
        yield f"{title} {text}" if title else text


PIPELINE = ReviewsPipeline()
__all__ = ["PIPELINE", "MovieReview", "ReviewsParams", "SentimentAnswer"]

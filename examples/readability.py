"""The readability pipeline of DESIGN.md, tiny, as an nbserve ensemble.

``preprocess`` turns text into token ids + an attention mask for ``bert`` and a few text features for
``trees``; ``bert`` (a tiny transformer-ish regressor) and ``trees`` (a random forest) score the text
in parallel; ``postprocess`` blends the two scores with a weight input::

    text ─ preprocess ─┬─ ids, mask ─ bert ──┬─ postprocess ─ score
                       └─ features ── trees ─┘        │
    weight ───────────────────────────────────────────┘

    python examples/readability.py [OUT] [--torch]   # register, serve, score, benchmark, export OUT

Every model is built here in a second from generated data. ``bert`` comes in two forms that compute
the same function: a torch module (``torch_bert``) and a NumPy callable (``NumpyBert``), which runs
as a Triton Python-backend model too (the tritonserver used in benchmarks has only that backend); the
forest likewise as a scikit-learn model or wrapped in a Python callable (``ForestScorer``).
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np

import nbserve

VOCAB = 512
SEQ_LEN = 16
WIDTH = 16
N_FEATURES = 8
_WORD = re.compile(r"[A-Za-z']+")
_WORDS = ("the a cat sat on mat readability of notebook inference server batching model ensemble "
          "extraordinarily complicated sentence structures characterize bureaucratic documentation while "
          "short words help dog ran fast it was fun to see").split()


# ----------------------------------------------------------------------------- preprocess
def _text(item: Any) -> str:
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def tokenize(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Word ids (a stable hash into the vocabulary, 0 is padding) and the mask, SEQ_LEN long."""
    ids = [zlib.crc32(w.lower().encode()) % (VOCAB - 1) + 1 for w in _WORD.findall(text)][:SEQ_LEN]
    out = np.zeros(SEQ_LEN, np.int64)
    out[: len(ids)] = ids
    mask = np.zeros(SEQ_LEN, np.int64)
    mask[: len(ids)] = 1
    return out, mask


def text_features(text: str) -> np.ndarray:
    """A few classic readability features (the article computes ~200; eight make the point)."""
    words = _WORD.findall(text) or [""]
    sentences = max(len(re.findall(r"[.!?]+", text)), 1)
    lengths = np.array([len(w) for w in words], np.float32)
    syllables = np.array([max(len(re.findall(r"[aeiouy]+", w.lower())), 1) for w in words], np.float32)
    return np.array([
        len(text) / 100,
        len(words) / 20,
        lengths.mean() / 5,
        sentences / 3,
        len(words) / sentences / 20,
        (lengths > 6).mean(),
        syllables.mean() / 2,
        len(re.findall(r"[,;:]", text)) / 5,
    ], np.float32)


def preprocess(text: np.ndarray) -> dict[str, np.ndarray]:
    """Batched: text ``[n, 1]`` BYTES -> ``input_ids``, ``attention_mask`` ``[n, 16]`` INT64 and
    ``features`` ``[n, 8]`` FP32."""
    items = [_text(t) for t in text[:, 0]]
    tokens = [tokenize(t) for t in items]
    return {
        "input_ids": np.stack([ids for ids, _ in tokens]),
        "attention_mask": np.stack([mask for _, mask in tokens]),
        "features": np.stack([text_features(t) for t in items]),
    }


# ----------------------------------------------------------------------------- bert
def bert_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def dense(n_in: int, n_out: int) -> np.ndarray:
        return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)

    return {"embed": (rng.standard_normal((VOCAB, WIDTH)) * 0.5).astype(np.float32),
            "wq": dense(WIDTH, WIDTH), "wk": dense(WIDTH, WIDTH), "wv": dense(WIDTH, WIDTH),
            "w1": dense(WIDTH, WIDTH), "w2": dense(WIDTH, 1), "b2": np.array([0.1], np.float32)}


class NumpyBert:
    """One self-attention layer over the word embeddings, masked mean pooling, a small head."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.w = {k: np.asarray(v) for k, v in weights.items()}

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        w = self.w
        x = w["embed"][input_ids]                                     # [n, L, W]
        q, k, v = x @ w["wq"], x @ w["wk"], x @ w["wv"]
        scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(WIDTH))
        scores = np.where(attention_mask[:, None, :] > 0, scores, np.float32(-1e9))
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        h = x + (scores / scores.sum(axis=-1, keepdims=True)) @ v
        m = attention_mask[..., None].astype(np.float32)
        pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
        return (np.tanh(pooled @ w["w1"]) @ w["w2"] + w["b2"]).astype(np.float32)


def torch_bert(weights: dict[str, np.ndarray]) -> Any:
    """The same model as :class:`NumpyBert`, as a torch module (imported only here)."""
    import torch

    class TinyBert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for key, value in weights.items():
                self.register_buffer(key, torch.from_numpy(np.array(value)))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            x = self.embed[input_ids]
            q, k, v = x @ self.wq, x @ self.wk, x @ self.wv
            scores = q @ k.transpose(1, 2) / WIDTH ** 0.5
            scores = scores.masked_fill(attention_mask[:, None, :] == 0, -1e9)
            h = x + torch.softmax(scores, dim=-1) @ v
            m = attention_mask[..., None].to(x.dtype)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
            return torch.tanh(pooled @ self.w1) @ self.w2 + self.b2

    return TinyBert().eval()


# ----------------------------------------------------------------------------- trees
def generated_texts(n: int, seed: int = 0) -> list[str]:
    """Texts of varying length and word choice, for training and for load."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        sentences = [" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 12)))) for _ in range(int(rng.integers(1, 4)))]
        texts.append(". ".join(s.capitalize() for s in sentences) + ".")
    return texts


def train_forest(seed: int = 0, n: int = 300) -> Any:
    """A RandomForestRegressor on the features of generated texts, against a Flesch-like score."""
    from sklearn.ensemble import RandomForestRegressor

    x = np.stack([text_features(t) for t in generated_texts(n, seed)])
    y = 2.0 - 1.5 * x[:, 4] - 2.0 * x[:, 6] + 0.05 * np.random.default_rng(seed).standard_normal(n)
    return RandomForestRegressor(n_estimators=20, max_depth=6, random_state=seed).fit(x, y.astype(np.float32))


class ForestScorer:
    """The forest as a plain Python callable (for Triton's Python backend)."""

    def __init__(self, forest: Any) -> None:
        self.forest = forest

    def __call__(self, input__0: np.ndarray) -> np.ndarray:
        return self.forest.predict(input__0).astype(np.float32)[:, None]


# ----------------------------------------------------------------------------- postprocess
def postprocess(bert: np.ndarray, trees: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend the two scores: ``weight * bert + (1 - weight) * trees``."""
    return (weight * bert + (1 - weight) * trees).astype(np.float32)


# ----------------------------------------------------------------------------- the pipeline
def register_models(registry: Any = None, *, python_only: bool = False, max_batch_size: int = 64,
                    delay_us: int = 200, seed: int = 0) -> Any:
    """Register ``preprocess``, ``bert``, ``trees`` and ``postprocess`` in ``registry`` (default
    nbserve's). ``python_only`` registers bert and the forest as Python callables."""
    registry = registry if registry is not None else nbserve.default_registry
    batching = {"max_batch_size": max_batch_size, "dynamic_batching": {"max_queue_delay_microseconds": delay_us}}
    texts = np.array([[t.encode()] for t in generated_texts(4, seed)], dtype=object)
    tokens = preprocess(texts)
    registry.register(preprocess, name="preprocess", example={"text": texts}, **batching)
    weights = bert_weights(seed)
    bert = NumpyBert(weights) if python_only else torch_bert(weights)
    registry.register(bert, name="bert", example={k: tokens[k] for k in ("input_ids", "attention_mask")},
                      outputs=["logits"], **batching)
    forest = train_forest(seed)
    if python_only:
        registry.register(ForestScorer(forest), name="trees", example={"input__0": tokens["features"]},
                          outputs=["output__0"], **batching)
    else:
        registry.register(forest, name="trees", **batching)
    score = np.zeros((4, 1), np.float32)
    registry.register(postprocess, name="postprocess", example={"bert": score, "trees": score, "weight": score + 0.5},
                      outputs=["score"], **batching)
    return registry


def build_ensemble(name: str = "readability", max_batch_size: int = 64) -> nbserve.Ensemble:
    """The ensemble of the four models, built in code."""
    ens = nbserve.Ensemble(name, max_batch_size=max_batch_size)
    ens.input("text", "BYTES", [1])
    ens.input("weight", "FP32", [1])
    ens.step("preprocess", inputs={"text": "text"},
             outputs={"input_ids": "ids", "attention_mask": "mask", "features": "feats"})
    ens.step("bert", inputs={"input_ids": "ids", "attention_mask": "mask"}, outputs={"logits": "bert_score"})
    ens.step("trees", inputs={"input__0": "feats"}, outputs={"output__0": "tree_score"})
    ens.step("postprocess", inputs={"bert": "bert_score", "trees": "tree_score", "weight": "weight"},
             outputs={"score": "score"})
    ens.output("score")
    return ens


def by_hand(registry: Any, text: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The pipeline called one model after another in the kernel: what the ensemble saves you."""
    tokens = registry.get("preprocess").infer({"text": text})
    bert = registry.get("bert").infer({"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]})
    trees = registry.get("trees").infer({"input__0": tokens["features"]})
    return registry.get("postprocess").infer(
        {"bert": bert["logits"], "trees": trees["output__0"], "weight": weight})["score"]


def main(argv: list[str] | None = None) -> None:
    """Register the four models and the ensemble, serve, score a few texts, benchmark, export."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="The readability pipeline: register, ensemble, serve, "
                                     "benchmark, export.")
    parser.add_argument("out", nargs="?", help="export the repository here (default: a temporary folder)")
    parser.add_argument("--torch", action="store_true",
                        help="bert as a torch module and trees as the scikit-learn forest (default: both as "
                        "Python callables, which any tritonserver with the Python backend runs)")
    args = parser.parse_args(argv)

    # 1. Register: preprocess, bert, trees, postprocess, and the ensemble that wires them.
    registry = register_models(nbserve.Registry(), python_only=not args.torch)
    registry.register(build_ensemble())
    print(registry.models(), end="\n\n")

    text = np.array([[b"The cat sat on the mat."],
                     [b"Extraordinarily complicated sentence structures characterize bureaucratic documentation."]],
                    dtype=object)
    weight = np.full((2, 1), 0.7, np.float32)
    with nbserve.serve(registry, grpc=False, metrics=False) as server:
        # 2. Serve and score: one request runs the four steps, bert and trees in parallel.
        result = server.infer("readability", {"text": text, "weight": weight}, trace=True)
        print("score:", result["score"].ravel(), " by hand:", by_hand(registry, text, weight).ravel())
        for step in result.trace:
            print(f"  step {step['step']} {step['model']:<12} queue {step['queue_us']:8.0f} us  compute "
                  f"{step['compute_us']:8.0f} us  ({step['start_us']:.0f} -> {step['end_us']:.0f} us)")

        # 3. Benchmark the ensemble over HTTP with generated texts, as a client would send them.
        requests = [{"text": np.array([[t.encode()]], dtype=object), "weight": np.full((1, 1), 0.7, np.float32)}
                    for t in generated_texts(32, seed=1)]
        run = nbserve.bench(server, "readability", concurrency=[1, 8], protocol="http", inputs=requests,
                            measurement_interval_ms=300, warmup_s=0.1, max_windows=3, live=False)
        print(f"\n{run.table()}\n")

    # 4. Export the production repository (the ensemble brings its steps) and validate it.
    with tempfile.TemporaryDirectory() as scratch:
        report = nbserve.export(args.out or f"{scratch}/readability_repository", ["readability"], registry=registry)
        print(report)
        print(nbserve.validate(report.path).summary())
    registry.clear()


if __name__ == "__main__":
    main()

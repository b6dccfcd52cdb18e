"""The readability pipeline of DESIGN.md with tiny models, and the same ensemble written in code.

``preprocess`` (Python: tokenizes the text for BERT and computes 8 text features) feeds ``bert`` (a
tiny PyTorch regressor over token embeddings) and ``trees`` (a scikit-learn random forest, served
through the trees backend) in parallel; ``blend`` (Python) mixes the two scores with a weight input.

The widget tests import this module; the browser test pastes its source into a notebook cell, so it
imports nothing from the test suite and builds every model from fixed seeds in a second or two.
"""

from __future__ import annotations

import numpy as np

SEQUENCE = 16
FEATURES = 8
VOCABULARY = 97


def preprocess(text):
    """BYTES [B, 1] -> input_ids, attention_mask INT64 [B, 16] and features FP32 [B, 8]."""
    rows = [t.decode() if isinstance(t, bytes) else str(t) for t in np.asarray(text, dtype=object).reshape(-1)]
    ids = np.zeros((len(rows), SEQUENCE), np.int64)
    mask = np.zeros((len(rows), SEQUENCE), np.int64)
    features = np.zeros((len(rows), FEATURES), np.float32)
    for i, row in enumerate(rows):
        words = row.lower().split()[:SEQUENCE]
        ids[i, : len(words)] = [1 + sum(map(ord, w)) % (VOCABULARY - 1) for w in words]
        mask[i, : len(words)] = 1
        lengths = [len(w) for w in words] or [0]
        features[i] = [len(row), len(words), np.mean(lengths), max(lengths), row.count(","), row.count("."),
                       sum(c.isupper() for c in row), len(set(words))]
    return {"input_ids": ids, "attention_mask": mask, "features": features}


def blend(bert, trees, weight):
    """Three FP32 [B, 1] -> score FP32 [B, 1]: the weighted mean of the two scores."""
    return {"score": (weight * bert + (1 - weight) * trees).astype(np.float32)}


def make_bert():
    import torch

    class TinyBert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(VOCABULARY, 8)
            self.head = torch.nn.Linear(8, 1)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).float()
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
            return self.head(pooled)

    return TinyBert()


def make_trees():
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 40, size=(64, FEATURES)).astype(np.float32)
    y = (x[:, 0] / 40 - x[:, 2] / 20).astype(np.float32)
    return RandomForestRegressor(n_estimators=4, max_depth=3, random_state=0).fit(x, y)


def register_readability(registry) -> None:
    """Register the four tiny models in ``registry``."""
    texts = np.array([[b"A short text."], [b"Another, slightly longer one."]], dtype=object)
    registry.register(preprocess, name="preprocess", example={"text": texts})
    pre = preprocess(texts)
    registry.register(make_bert(), name="bert",
                      example={"input_ids": pre["input_ids"], "attention_mask": pre["attention_mask"]},
                      outputs=["logits"])
    registry.register(make_trees(), name="trees", example=pre["features"])
    one = np.ones((2, 1), np.float32)
    registry.register(blend, name="blend", example={"bert": one, "trees": one, "weight": one})


def readability_in_code():
    """The ensemble written in code, with the tensor names the canvas gives when it is drawn."""
    import nbserve

    ens = nbserve.Ensemble("readability", max_batch_size=64)
    ens.input("text", "BYTES", [1])
    ens.input("weight", "FP32", [1])
    ens.step("preprocess", inputs={"text": "text"},
             outputs={"input_ids": "input_ids", "attention_mask": "attention_mask", "features": "features"})
    ens.step("bert", inputs={"input_ids": "input_ids", "attention_mask": "attention_mask"},
             outputs={"logits": "logits"})
    ens.step("trees", inputs={"input__0": "features"}, outputs={"output__0": "output__0"})
    ens.step("blend", inputs={"bert": "logits", "trees": "output__0", "weight": "weight"},
             outputs={"score": "score"})
    ens.output("score")
    return ens


SAMPLE = {
    "text": np.array([[b"The quick brown fox jumps over the lazy dog."]], dtype=object),
    "weight": np.array([[0.25]], np.float32),
}

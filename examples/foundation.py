"""The foundation in one script: register Python models, see their Triton configs, write a model
repository, read it back and check the outputs.

    python examples/foundation.py [REPOSITORY_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import nbserve


def standardize(x):
    """A batched NumPy function: one row in, one row out."""
    return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)


def word_count(text):
    """Text in (Triton BYTES), numbers out; called once per item with batched=False."""
    return len(text[0].decode().split())


def main(repository: Path) -> None:
    # 1. Register: the signature comes from an example batch, the options are Triton's config fields.
    nbserve.register(standardize, example=np.random.rand(4, 8).astype("float32"), max_batch_size=64,
                     dynamic_batching={"max_queue_delay_microseconds": 100, "preferred_batch_size": [16, 32]},
                     instances=2)
    nbserve.register(word_count, example=np.array([["a notebook"], ["a server"]]), batched=False,
                     outputs=["words"])

    # 2. Look: the models table and each config.pbtxt, exactly what Triton will read.
    print(nbserve.models(), end="\n\n")
    for model in nbserve.default_registry:
        print(f"--- {model.name}/config.pbtxt\n{model.pbtxt}")

    # 3. Write the Triton repository, then read it back into a new registry from the files alone.
    nbserve.write_repository(repository, nbserve.models())
    loaded = nbserve.read_repository(repository)

    # 4. The read-back models answer like the live functions.
    samples = {
        "standardize": {"x": np.random.rand(3, 8).astype("float32")},
        "word_count": {"text": np.array([[b"serve models from a notebook"], [b"Triton"]], dtype=object)},
    }
    for name, sample in samples.items():
        live, back = nbserve.get(name).infer(sample), loaded.get(name).infer(sample)
        same = all(np.allclose(live[k], back[k]) for k in live)
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in back.items())
        print(f"{name}: {'outputs match' if same else 'OUTPUTS DIFFER'} ({shapes})")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            main(Path(scratch) / "model_repository")

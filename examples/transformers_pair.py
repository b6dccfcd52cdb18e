"""A Hugging Face (tokenizer, model) pair as a Triton model: text in (BYTES), logits out. In the kernel
the live tokenizer and model run together; on disk the pair becomes a Triton ensemble of a
Python-backend tokenizer and the model as ONNX.

    python examples/transformers_pair.py [REPOSITORY_DIR]

The tokenizer and the tiny BERT are built here from a word list, so nothing is downloaded.
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

import nbserve

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = "the a cat dog sat ran on mat far fast slow notebook model server batch , .".split()


def tiny_classifier(folder: Path):
    import torch
    import transformers

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # transformers 5 takes the word list as vocab=; 4.x as vocab_file=.
    parameters = inspect.signature(transformers.BertTokenizerFast.__init__).parameters
    key = "vocab" if "vocab" in parameters and "vocab_file" not in parameters else "vocab_file"
    tokenizer = transformers.BertTokenizerFast(**{key: str(vocab)})
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     num_labels=2)
    return tokenizer, transformers.BertForSequenceClassification(config).eval()


def main(out: str, scratch: Path) -> None:
    pair = tiny_classifier(scratch)
    nbserve.register(pair, name="sentiment", max_batch_size=16, dynamic_batching={"max_queue_delay_microseconds": 500})
    print(nbserve.get("sentiment"), end="\n\n")

    texts = np.array([[b"the cat sat on the mat."], [b"a dog ran far, fast."]], dtype=object)
    with nbserve.serve() as server:
        client = httpclient.InferenceServerClient(server.http_address)
        request = httpclient.InferInput("text", list(texts.shape), "BYTES")
        request.set_data_from_numpy(texts)
        print("logits:\n", client.infer("sentiment", [request]).as_numpy("logits").round(4))

    report = nbserve.export(out)  # sentiment (ensemble), sentiment_tokenizer (Python), sentiment_model (ONNX)
    print(report)
    print(nbserve.validate(report.path).summary())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        main(sys.argv[1] if len(sys.argv) > 1 else f"{scratch}/model_repository", Path(scratch))

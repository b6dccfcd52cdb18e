"""The transformers backend: (tokenizer, model) pairs and pipelines, in the kernel and as a Triton
ensemble (Python-backend tokenizer + ONNX model) written to a repository and read back.

Every model is built here from a tiny config and a word list (no hub access).
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from nbserve.backends import backend_for  # noqa: E402
from nbserve.backends import transformers as text_backend  # noqa: E402
from nbserve.config import parse, render  # noqa: E402
from nbserve.errors import SignatureError  # noqa: E402
from nbserve.registry import Registry  # noqa: E402
from nbserve.repository import read_repository, write_repository  # noqa: E402

WORDS = ["hello", "world", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "##s", ",", "."]
TEXTS = np.array([[b"hello world"], [b"the cat"], [b"a dog ran far, the cats sat on the mat."]], dtype=object)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the word list as vocab=; 4.x as vocab_file=.
    parameters = inspect.signature(transformers.BertTokenizerFast.__init__).parameters
    key = "vocab" if "vocab" in parameters and "vocab_file" not in parameters else "vocab_file"
    tok = transformers.BertTokenizerFast(**{key: str(path)})
    assert tok.convert_tokens_to_ids("cat") == vocab.index("cat")
    return tok


def _config(tokenizer, **overrides):
    settings = dict(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    settings.update(overrides)
    return transformers.BertConfig(**settings)


def _classifier(tokenizer, num_labels: int = 2):
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(_config(tokenizer, num_labels=num_labels)).eval()


def _encoder(tokenizer):
    torch.manual_seed(1)
    return transformers.BertModel(_config(tokenizer)).eval()


def _one_by_one(tokenizer, model, texts, pick) -> np.ndarray:
    """Each text alone, unpadded, through the model: what the batched runs must match."""
    rows = []
    for text in texts.reshape(-1):
        encoded = tokenizer([text.decode()], return_tensors="pt")
        with torch.inference_mode():
            rows.append(pick(model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]))[0])
    return np.stack([row.numpy() for row in rows])


def _reference_logits(tokenizer, model, texts) -> np.ndarray:
    return _one_by_one(tokenizer, model, texts, lambda out: out.logits)


def _reference_embeddings(tokenizer, model, texts) -> np.ndarray:
    return _one_by_one(tokenizer, model, texts, lambda out: out.last_hidden_state.mean(dim=1))


def _round_trip(tmp_path, model, output: str, width: int) -> np.ndarray:
    """Write the registered model, check the three folders, read back, return the ensemble's output."""
    name = model.name
    repo = write_repository(tmp_path / "repo", [model])
    folders = sorted([name, f"{name}_model", f"{name}_tokenizer"])
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == folders

    ensemble = parse((repo / name / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble"
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [("text", 13, [1])]  # TYPE_STRING
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [(output, 11, [width])]
    assert not ensemble.HasField("dynamic_batching") and not ensemble.instance_group
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [f"{name}_tokenizer", f"{name}_model"]
    assert dict(steps[0].input_map) == {"text": "text"}
    assert dict(steps[0].output_map) == {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    assert dict(steps[1].input_map) == {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    assert dict(steps[1].output_map) == {output: output}
    assert list((repo / name / "1").iterdir()) == []

    tok_config = parse((repo / f"{name}_tokenizer" / "config.pbtxt").read_text())
    assert tok_config.backend == "python" and tok_config.max_batch_size == model.config.max_batch_size
    assert [(t.name, t.data_type, list(t.dims)) for t in tok_config.output] == [
        ("input_ids", 9, [-1]), ("attention_mask", 9, [-1]),  # TYPE_INT64
    ]
    assert tok_config.HasField("dynamic_batching")
    tok_files = {p.name for p in (repo / f"{name}_tokenizer" / "1").iterdir()}
    assert {"model.py", "tokenizer_config.json", "nbserve_tokenizer.json"} <= tok_files

    onnx_config = parse((repo / f"{name}_model" / "config.pbtxt").read_text())
    assert onnx_config.platform == "onnxruntime_onnx"
    assert [t.name for t in onnx_config.input] == ["input_ids", "attention_mask"]
    assert [(t.name, list(t.dims)) for t in onnx_config.output] == [(output, [width])]
    assert [p.name for p in (repo / f"{name}_model" / "1").iterdir()] == ["model.onnx"]

    back = read_repository(repo)
    assert back.names() == folders
    assert back.get(name).framework == "ensemble"
    return back.get(name).infer({"text": TEXTS})[output]


def test_pair_register_run_write_read(tokenizer, tmp_path) -> None:
    model = _classifier(tokenizer)
    assert text_backend.matches((tokenizer, model)) and text_backend.matches((model, tokenizer))
    assert backend_for((tokenizer, model)) is text_backend
    registered = Registry().register((tokenizer, model), name="sentiment")

    config = registered.config
    assert registered.framework == "transformers"
    assert config.max_batch_size == 64
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("text", 13, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("logits", 11, [2])]

    got = registered.infer({"text": TEXTS})["logits"]
    assert got.dtype == np.float32 and got.shape == (3, 2)
    expected = _reference_logits(tokenizer, model, TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    again = _round_trip(tmp_path, registered, "logits", 2)
    np.testing.assert_allclose(again, got, atol=1e-4)


def test_regression_head(tokenizer, tmp_path) -> None:
    model = _classifier(tokenizer, num_labels=1)
    registered = Registry().register((tokenizer, model), name="readability", max_batch_size=8)
    assert [list(t.dims) for t in registered.config.output] == [[1]]
    got = registered.infer({"text": TEXTS})["logits"]
    np.testing.assert_allclose(got, _reference_logits(tokenizer, model, TEXTS), atol=1e-5)
    again = _round_trip(tmp_path, registered, "logits", 1)
    np.testing.assert_allclose(again, got, atol=1e-4)


def test_feature_extraction_pipeline(tokenizer, tmp_path) -> None:
    encoder = _encoder(tokenizer)
    pipe = transformers.pipeline("feature-extraction", model=encoder, tokenizer=tokenizer)
    assert backend_for(pipe) is text_backend
    registered = Registry().register(pipe, name="embed")
    assert [(t.name, list(t.dims)) for t in registered.config.output] == [("embeddings", [32])]
    got = registered.infer({"text": TEXTS})["embeddings"]
    np.testing.assert_allclose(got, _reference_embeddings(tokenizer, encoder, TEXTS), atol=1e-5)
    again = _round_trip(tmp_path, registered, "embeddings", 32)
    np.testing.assert_allclose(again, got, atol=1e-4)


def test_text_classification_pipeline_gives_logits(tokenizer) -> None:
    model = _classifier(tokenizer, num_labels=3)
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)
    registered = Registry().register(pipe, name="topics")
    got = registered.infer({"text": TEXTS[:2]})["logits"]
    np.testing.assert_allclose(got, _reference_logits(tokenizer, model, TEXTS[:2]), atol=1e-5)


def test_renamed_tensors_flow_through_the_ensemble(tokenizer, tmp_path) -> None:
    model = _classifier(tokenizer)
    registered = Registry().register((tokenizer, model), name="renamed", inputs=["review"], outputs=["score"])
    assert [t.name for t in registered.config.input] == ["review"]
    assert [t.name for t in registered.config.output] == ["score"]
    got = registered.infer({"review": TEXTS})["score"]
    repo = write_repository(tmp_path / "repo", [registered])
    back = read_repository(repo).get("renamed")
    np.testing.assert_allclose(back.infer({"review": TEXTS})["score"], got, atol=1e-4)


def test_registering_puts_the_model_in_eval_mode(tokenizer) -> None:
    model = _classifier(tokenizer).train()
    registered = Registry().register((tokenizer, model), name="m")
    assert not model.training
    first = registered.infer({"text": TEXTS})["logits"]
    np.testing.assert_array_equal(registered.infer({"text": TEXTS})["logits"], first)


def test_refused(tokenizer) -> None:
    registry = Registry()
    with pytest.raises(SignatureError, match="one input"):
        registry.register((tokenizer, _classifier(tokenizer)), name="m", inputs=["a", "b"])
    masked = transformers.BertForMaskedLM(_config(tokenizer))
    pipe = transformers.pipeline("fill-mask", model=masked, tokenizer=tokenizer)
    with pytest.raises(SignatureError, match="fill-mask"):
        registry.register(pipe, name="m")
    assert not text_backend.matches((tokenizer, tokenizer))
    assert not text_backend.matches(("a", "b"))


ONNX_AS_PYTHON_MODEL_PY = '''\
import os

import onnxruntime
import triton_python_backend_utils as pb_utils

TOKENS = ("input_ids", "attention_mask")


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(here, "model.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in TOKENS}
            (logits,) = self.session.run(None, feeds)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", logits)]))
        return responses
'''


@pytest.mark.triton
@pytest.mark.slow
def test_written_ensemble_runs_in_real_tritonserver(tokenizer, tmp_path) -> None:
    """The tokenizer step and the ensemble wiring, unchanged, in the real tritonserver.

    Its build here has only the Python backend, so the ONNX step is served by a Python model that runs
    the very same model.onnx in ONNX Runtime.
    """
    tritonserver = pytest.importorskip("nbserve._tritonserver")
    reason = tritonserver.unavailable_reason()
    if reason is not None:
        pytest.skip(f"real tritonserver unavailable: {reason}")
    import tritonclient.http as httpclient

    registered = Registry().register((tokenizer, _classifier(tokenizer)), name="sentiment")
    expected = registered.infer({"text": TEXTS})["logits"]
    repo = write_repository(tmp_path / "repo", [registered])
    step = repo / "sentiment_model"
    config = parse((step / "config.pbtxt").read_text())
    config.platform, config.backend = "", "python"
    (step / "config.pbtxt").write_text(render(config))
    (step / "1" / "model.py").write_text(ONNX_AS_PYTHON_MODEL_PY)

    with tritonserver.TritonServer(repo) as server:
        client = httpclient.InferenceServerClient(url=server.http_address)
        text = httpclient.InferInput("text", list(TEXTS.shape), "BYTES")
        text.set_data_from_numpy(TEXTS)
        tokens = client.infer("sentiment_tokenizer", [text])
        local = registered.latest.runner.tokens(TEXTS)
        for key in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(tokens.as_numpy(key), local[key])
        result = client.infer("sentiment", [text])
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-4)

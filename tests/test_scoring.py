import numpy as np
from mlx_lm.utils import load

from gift_mlx import toy
from gift_mlx.config import TrainConfig
from gift_mlx.scoring import load_scores, score, scores_file
from safetensors.numpy import load_file


def softmax_target_probs(model, tokens, target):
    """Independent reference: one unpadded row, float64 softmax in numpy."""
    import mlx.core as mx

    logits = np.array(model(mx.array(tokens[None, :-1]))[0].astype(mx.float32)).astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pos = np.nonzero(target[1:])[0]
    return p[pos, tokens[1:][pos]]


def test_scores_equal_softmax_of_instruct_logits(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    cfg = TrainConfig(instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path))
    files = score(cfg, log=lambda m: None)
    assert set(files) == {"train", "valid"}
    stored = load_file(str(files["train"]))
    model, tok = load(str(instruct))
    from gift_mlx.data import load_split

    ds = load_split(task_data / "train.jsonl", tok, 2048)
    offsets = stored["offsets"]
    assert len(offsets) == len(ds) + 1 and offsets[-1] == sum(e.num_targets for e in ds.examples)
    for i in (0, 7, len(ds) - 1):
        ref = softmax_target_probs(model, ds.examples[i].tokens, ds.examples[i].target)
        np.testing.assert_allclose(stored["values"][offsets[i] : offsets[i + 1]], ref, rtol=2e-4, atol=1e-7)


def test_stale_scores_are_detected(tmp_path, llama_pair):
    base, instruct = llama_pair
    data = toy.write_task_data(tmp_path / "data", n_train=8, n_valid=4)
    cfg = TrainConfig(instruct=str(instruct), data=str(data), adapter_path=str(tmp_path / "run"))
    logs = []
    score(cfg, log=logs.append)
    assert sum("computing" in m for m in logs) == 2
    logs.clear()
    score(cfg, log=logs.append)
    assert sum("reusing" in m for m in logs) == 2 and not any("comput" in m for m in logs)

    # another data file: train scores stale, valid reused
    toy.write_jsonl(data / "train.jsonl", toy.arithmetic_records(9, seed=5))
    logs.clear()
    score(cfg, log=logs.append)
    assert any("recomputing stale" in m and "train-instruct" in m for m in logs)
    assert any("reusing" in m and "valid-instruct" in m for m in logs)

    # another model (the base as guide under the instruct role's file): both stale
    cfg.instruct = str(base)
    logs.clear()
    score(cfg, log=logs.append)
    assert sum("recomputing stale" in m for m in logs) == 2

    # another max length changes the tokens: stale
    cfg.max_seq_length = 24
    logs.clear()
    score(cfg, log=logs.append)
    assert sum("recomputing stale" in m for m in logs) == 2


def test_gift_base_scores_come_from_the_base(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path),
                      method="gift-base")
    files = score(cfg, log=lambda m: None)
    assert files["train"] == scores_file(tmp_path / "scores", "train", "base")
    q_base = load_file(str(files["train"]))["values"]
    cfg.method = "gift"
    q_instruct = load_file(str(score(cfg, log=lambda m: None)["train"]))["values"]
    assert q_base.shape == q_instruct.shape and not np.allclose(q_base, q_instruct)


def test_missing_score_file_is_none(tmp_path):
    assert load_scores(tmp_path / "nope.safetensors", {}) is None


def test_scores_do_not_depend_on_the_number_of_cpu_streams(monkeypatch, llama_pair, task_data):
    """Rows of a batch are split over one MLX stream per core; 1, 2 or 3 streams give the same values."""
    import mlx.core as mx

    from gift_mlx import scoring
    from gift_mlx.data import load_split

    model, tok = load(str(llama_pair[1]))
    ds = load_split(task_data / "train.jsonl", tok, 2048)
    out = {}
    for n in (1, 2, 3):
        monkeypatch.setattr(scoring, "cpu_streams", lambda n=n: [mx.new_stream(mx.cpu) for _ in range(n)])
        out[n] = np.concatenate(scoring.compute_scores(model, ds, batch_tokens=512))
    np.testing.assert_allclose(out[2], out[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out[3], out[1], rtol=1e-5, atol=1e-7)


def test_scoring_batches_shrink_with_the_vocabulary():
    """Logits are batch positions x vocabulary: a 152k vocabulary gets ~1/4.6 of the 8192 positions."""
    from mlx_lm.models import llama

    from gift_mlx.scoring import batch_tokens_for

    def model(vocab):
        return llama.Model(llama.ModelArgs(model_type="llama", hidden_size=8, num_hidden_layers=1, intermediate_size=16,
                                           num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-5,
                                           vocab_size=vocab, tie_word_embeddings=True))

    assert batch_tokens_for(model(384)) == 8192
    n = batch_tokens_for(model(151936))
    assert 1024 < n < 2048 and n * 151936 <= 2**28

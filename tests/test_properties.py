"""Property-based tests (hypothesis) of the readers and the config layer: for any record shape or option
value, the result is either correct or one GiftError naming where; never another exception, never a
non-finite or out-of-range value let through."""

import json
import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gift_mlx.config import TrainConfig, check_value, load_config
from gift_mlx.data import load_split, read_jsonl, to_messages
from gift_mlx.errors import GiftError
from gift_mlx.evaluate import EvalSettings
from gift_mlx.outputs import NAME_MAX, hidden_name, write_json
from gift_mlx.problems import to_problem

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

# text with the troublemakers: Unicode line breaks, control-token text, lone surrogates, NUL, emoji
pieces = st.sampled_from(list(string.printable) + ["\u2028", "\u2029", "\x85", "\x00", "é", "😀", "\ud800",
                                                   "<|im_end|>", "<|im_start|>"])
text = st.lists(pieces, max_size=12).map("".join)
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)
KEYS = ["prompt", "completion", "instruction", "response", "output", "input", "system", "messages", "question",
        "answer", "problem", "solution", "choices", "answerKey", "role", "content"]
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]),
                                           "content": text | st.integers()}), max_size=4)
records = st.dictionaries(st.sampled_from(KEYS) | text, json_values | messages, max_size=5)


def _encodable(s):
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@FAST
@given(lines=st.lists(records | json_values, max_size=5))
def test_read_jsonl_returns_the_records_or_names_the_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("jsonl") / "rows.jsonl"
    body = "\n".join(json.dumps(r) for r in lines) + "\n"  # ASCII escapes: any string survives the file
    path.write_text(body)
    try:
        rows = read_jsonl(path)
    except GiftError as e:
        assert str(e).startswith(f"{path}"), e
        return
    assert json.dumps([r for _, r in rows]) == json.dumps([r for r in lines if isinstance(r, dict)])
    assert all(_encodable(json.dumps(r, ensure_ascii=False)) for _, r in rows)


@FAST
@given(record=records)
def test_to_messages_gives_string_messages_or_names_the_line(record):
    try:
        out = to_messages(record, "f.jsonl:7")
    except GiftError as e:
        assert str(e).startswith("f.jsonl:7: "), e
        return
    assert out and all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in out)
    assert any(m["role"] == "assistant" for m in out)


@FAST
@given(record=records)
def test_to_problem_gives_a_problem_with_a_reference_or_names_the_line(record):
    try:
        problem = to_problem(record, "p.jsonl:3", 3)
    except GiftError as e:
        assert str(e).startswith("p.jsonl:3: "), e
        return
    assert isinstance(problem.reference, str) and problem.reference.strip()
    assert problem.messages and problem.messages[-1]["role"] == "user"


@FAST
@given(record=st.fixed_dictionaries({"prompt": text, "completion": text}))
def test_tokenized_rows_keep_their_targets_or_are_refused(llama_pair, tmp_path_factory, record):
    """Every accepted row has target tokens, and the response's tokens end with the end-of-turn token:
    none is silently lost to text the tokenizer reads as a control token."""
    from gift_mlx.models import load_tokenizer

    tokenizer = _tokenizer(llama_pair[1], load_tokenizer)
    path = tmp_path_factory.mktemp("rows") / "train.jsonl"
    path.write_text(json.dumps(record) + "\n")
    try:
        ds = load_split(path, tokenizer, 512)
    except GiftError as e:
        assert str(e).startswith(f"{path}"), e
        return
    [e] = ds.examples
    eos = set(tokenizer.eos_token_ids)
    targets = e.tokens[e.target]
    assert targets[-1] in eos and not (set(targets[:-1].tolist()) & eos)


_TOKENIZERS = {}


def _tokenizer(path, load):
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load(path, chat=True)
    return _TOKENIZERS[path]


# ---- the config layer ----

FIELDS = [f for f in TrainConfig.__dataclass_fields__ if f != "extra"]


@FAST
@given(values=st.dictionaries(st.sampled_from(FIELDS), scalars | st.lists(text, max_size=2), max_size=6))
def test_any_yaml_mapping_gives_a_checked_config_or_one_error(tmp_path_factory, values):
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    try:
        path.write_text(yaml.safe_dump(values))
    except UnicodeEncodeError:  # a lone surrogate cannot be written at all
        return
    try:
        cfg = load_config(path).validate_options()
    except GiftError as e:
        assert str(e), e
        return
    for name, f in TrainConfig.__dataclass_fields__.items():
        value = getattr(cfg, name)
        if isinstance(value, float):
            assert math.isfinite(value), name
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if value is not None and lo is not None:
            assert value >= lo, name
        if value is not None and hi is not None:
            assert value <= hi, name
    assert isinstance(cfg.online_scores, bool) and isinstance(cfg.resume, bool)


@FAST
@given(value=scalars, kind=st.sampled_from([int, float, bool, str]),
       lo=st.none() | st.integers(-10, 10), hi=st.none() | st.integers(10, 100))
def test_check_value_returns_a_value_of_the_kind_in_range_or_raises(value, kind, lo, hi):
    try:
        out = check_value("--x", value, kind, lo, hi)
    except GiftError as e:
        assert str(e).startswith("--x"), e
        return
    assert type(out) is kind
    if kind in (int, float):
        assert math.isfinite(out) and (lo is None or out >= lo) and (hi is None or out <= hi)


@FAST
@given(samples=scalars, temperature=scalars, top_p=scalars, seed=scalars, limit=scalars)
def test_eval_settings_are_checked_or_refused(samples, temperature, top_p, seed, limit):
    s = EvalSettings(samples=samples, temperature=temperature, top_p=top_p, seed=seed, limit=limit)
    try:
        s.check()
    except GiftError as e:
        assert str(e).startswith("--"), e
        return
    assert 0 < s.top_p <= 1 and 0 <= s.seed < 2**64 and math.isfinite(s.temperature)


@FAST
@given(data=json_values)
def test_write_json_writes_strict_json_or_nothing(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("json") / "x.json"
    try:
        write_json(path, data)
    except GiftError as e:
        assert str(e).startswith(str(path)) and not path.exists(), e
        return
    except UnicodeEncodeError:
        pytest.skip("lone surrogate")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} written"))
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


@settings(max_examples=100, deadline=None)
@given(name=st.text(min_size=1, max_size=255).filter(lambda n: "/" not in n and len(n.encode()) <= 255 and _encodable(n)))
def test_hidden_names_fit_a_file_name(name):
    assert len(hidden_name(name, "tmp-4194304").encode()) <= NAME_MAX
    assert len(hidden_name(name, "old-4194304").encode()) <= NAME_MAX

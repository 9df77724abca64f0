"""The chat templates of the families users bring (tests/chat_templates.py): the targets are exactly each reply
and its end-of-turn token, a system turn is kept or folded, and what a template refuses or rewrites is said."""

import json
import shutil
from dataclasses import replace

import pytest
from click.testing import CliRunner

from chat_templates import BY_NAME, FAMILIES, MISTRAL, write_family_tokenizer
from gift_mlx import data, toy
from gift_mlx.chat import Chat, repl
from gift_mlx.cli import main
from gift_mlx.errors import GiftError
from gift_mlx.models import load_model, load_tokenizer

SYSTEM = "Be brief."
TURNS = [("What is 1+1?", "1+1=2. #### 2"), ("And 2+2?", "2+2=4. #### 4")]


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-tokenizer")
    toy.build_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizers(toy_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f.name: load_tokenizer(write_family_tokenizer(toy_tokenizer, root / f.name, f)) for f in FAMILIES}


def conversation(turns, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    for user, reply in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def target_texts(tok, tokens, target):
    """The text of each run of consecutive target tokens."""
    runs, run = [], []
    for t, is_target in zip(tokens.tolist(), target.tolist()):
        if is_target:
            run.append(t)
        elif run:
            runs, run = runs + [tok.decode(run)], []
    return runs + ([tok.decode(run)] if run else [])


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("n_turns", [1, 2], ids=["one-turn", "two-turns"])
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_targets_are_exactly_each_reply_and_its_end_of_turn(tokenizers, family, system, n_turns):
    tok, turns = tokenizers[family.name], TURNS[:n_turns]
    messages = conversation(turns, system)
    fitted = data.fit_template(messages, tok)
    tokens, target, missed = data.tokenize(fitted, tok, "f:1")
    expected = [family.reply(reply, i == n_turns - 1) for i, (_, reply) in enumerate(turns)]
    assert target_texts(tok, tokens, target) == [e for e in expected if e is not None]
    assert missed == expected.count(None)
    text = tok.decode(tokens.tolist())
    assert all(user in text for user, _ in turns)
    if system:  # kept: in its own turn, or folded into the first user turn when the template has no system role
        assert SYSTEM in text
        assert (fitted is not messages) == family.folds
        if family.folds:
            assert fitted[0] == {"role": "user", "content": f"{SYSTEM}\n\n{turns[0][0]}"}


def test_reasoning_reply_of_qwen3_and_no_think_smollm3(tokenizers, toy_tokenizer, tmp_path):
    tok = tokenizers["qwen3"]
    tokens, target, _ = data.tokenize(conversation([("1+1?", "<think>\nadd them\n</think>\n\n2")]), tok)
    assert target_texts(tok, tokens, target) == ["<think>\nadd them\n</think>\n\n2<|im_end|>"]
    # no think tokens: mlx-lm renders with enable_thinking=False, the empty block goes into the prompt, and an
    # earlier reply (written without it) is still the reply the model writes: every turn has its targets
    tok = load_tokenizer(write_family_tokenizer(toy_tokenizer, tmp_path, replace(BY_NAME["qwen3"], plain=())))
    tokens, target, missed = data.tokenize(conversation(TURNS), tok)
    assert target_texts(tok, tokens, target) == ["1+1=2. #### 2<|im_end|>", "2+2=4. #### 4<|im_end|>"]
    assert missed == 0
    tok = tokenizers["smollm3"]  # reasoning off: the empty think block is in the prompt, not a target
    tokens, target, _ = data.tokenize(conversation(TURNS, "/no_think " + SYSTEM), tok)
    assert "<think>\n\n</think>\n1+1=2" in tok.decode(tokens.tolist())
    assert target_texts(tok, tokens, target) == ["1+1=2. #### 2<|im_end|>", "2+2=4. #### 4<|im_end|>"]


def write_rows(path, rows):
    return toy.write_jsonl(path, [{"messages": m} for m in rows])


def test_load_data_says_what_the_template_folded_and_left_untrained(tmp_path, tokenizers):
    write_rows(tmp_path / "train.jsonl", [conversation(TURNS, SYSTEM), conversation(TURNS[:1])])
    logged = []
    ds = data.load_data(tmp_path, tokenizers["gemma2"], 2048, log=logged.append)["train"]
    assert (ds.folded, ds.turns, ds.missed) == (1, 3, 0)
    assert logged == ["data: folded the system turn into the first user turn: the instruct template has no "
                      "system role (1 rows)"]
    logged = []
    ds = data.load_data(tmp_path, tokenizers["qwen3"], 2048, log=logged.append)["train"]
    assert (ds.folded, ds.turns, ds.missed) == (0, 3, 1)
    assert len(logged) == 1 and logged[0].startswith(f"warning: {tmp_path / 'train.jsonl'}: 1 of 3 assistant turns "
                                                     "get no target tokens: the chat template of ")
    assert sum(e.num_targets for e in ds.examples) > 0


def test_a_template_that_refuses_a_record_names_file_line_and_model(tmp_path, tokenizers):
    path = write_rows(tmp_path / "train.jsonl", [conversation(TURNS), conversation(TURNS)[:1] + conversation(TURNS)])
    with pytest.raises(GiftError) as e:
        data.load_data(tmp_path, tokenizers["mistral"], 2048)
    model = data.chat_format(tokenizers["mistral"]).model
    assert str(e.value) == (f"{path}:2: chat template of {model}: Conversation roles must alternate "
                            "user/assistant/user/assistant/...")


# ---- the commands: one error line, a fold said once, the chat going on -------------------------------------


def with_template(src, dst, template):
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return dst


# Mistral's and Gemma 2's rules written with the toy's ChatML tokens, so the toy models can run them.
STRICT_CHATML = MISTRAL.replace("{{- bos_token }}", "").replace(
    "{%- if m.role == 'user' %}{{- '[INST] ' + m.content + ' [/INST]' }}"
    "{%- else %}{{- m.content + eos_token }}{%- endif %}",
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}",
) + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"


@pytest.fixture(scope="module")
def strict(llama_pair, tmp_path_factory):
    """The toy instruct model with a template that rejects a system turn and roles that do not alternate."""
    return with_template(llama_pair[1], tmp_path_factory.mktemp("strict") / "instruct", STRICT_CHATML)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["train", "score"])
def test_train_and_score_fold_the_system_turn_and_refuse_with_one_line(tmp_path, llama_pair, strict, command):
    rows = [conversation(TURNS[:1], SYSTEM)] * 4
    write_rows(tmp_path / "good" / "train.jsonl", rows)
    args = [command, "--base", llama_pair[0], "--instruct", strict, "--adapter-path", tmp_path / "out"]
    if command == "train":
        args += ["--iters", 1, "--lora-rank", 4, "--lora-alpha", 8, "--batch-size", 2]
    r = run(*args, "--data", tmp_path / "good")
    assert r.exit_code == 0, r.output
    assert r.output.count("folded the system turn into the first user turn") == 1
    path = write_rows(tmp_path / "bad" / "train.jsonl", rows + [conversation(TURNS)[:1] + conversation(TURNS)])
    r = run(*args[:-2], "--adapter-path", tmp_path / "out2", "--data", tmp_path / "bad")
    assert r.exit_code == 2 and not isinstance(r.exception, (AssertionError, TypeError))
    assert r.stderr.strip() == (f"error: {path}:5: chat template of {strict}: Conversation roles must alternate "
                                "user/assistant/user/assistant/...")
    assert not (tmp_path / "out2").exists()


def test_eval_names_the_problem_the_template_refuses(tmp_path, strict):
    path = toy.write_jsonl(tmp_path / "test.jsonl", [
        {"question": "What is 1+2?", "answer": "3"},
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 1+2?"}],
         "answer": "3"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "What is 1+2?"}], "answer": "3"},
    ])
    r = run("eval", "--model", strict, "--data", path, "--out", tmp_path / "out", "--greedy", "--samples", 0,
            "--max-tokens", 4)
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == (f"error: {path}:3: chat template of {strict}: Conversation roles "
                                                 "must alternate user/assistant/user/assistant/...")
    assert not (tmp_path / "out").exists()


def test_chat_folds_the_system_prompt_and_goes_on_after_a_refused_turn(strict):
    model, tokenizer, _ = load_model(strict)
    chat = Chat(model, tokenizer, system=SYSTEM, temperature=0.0, max_tokens=4)
    chat.reply("hi")
    prompt = tokenizer.decode(data.render(tokenizer, chat.messages()))
    assert prompt.startswith(f"<|im_start|>user\n{SYSTEM}\n\nhi<|im_end|>")  # folded into the first user turn
    chat.history.append({"role": "user", "content": "a turn left unanswered"})  # the next one cannot alternate
    out, notes = [], []
    repl(chat, ["again"], out.append, notes.append)
    assert notes == [f"[error: chat template of {strict}: Conversation roles must alternate "
                     "user/assistant/user/assistant/...]"]
    assert [m["content"] for m in chat.history][-1] == "a turn left unanswered"  # the refused turn was not kept

"""`gift chat`: multi-turn history through the chat template, the reused KV cache, and piped stdin."""

import os
import subprocess
import sys

import pytest

from gift_mlx.chat import Chat, repl
from gift_mlx.errors import GiftError
from gift_mlx.models import load_model
from test_evaluate import nan_instruct  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def instruct(llama_pair):
    model, tokenizer, _ = load_model(llama_pair[1])
    return model, tokenizer


def gift_chat(model, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "gift_mlx", "chat", "--model", str(model), "--max-tokens", "10",
                           "--temperature", "0", *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_history_and_cache_reuse_match_a_fresh_prefill(instruct):
    model, tokenizer = instruct
    chat = Chat(model, tokenizer, system="be brief", temperature=0.0, max_tokens=8)
    first = chat.reply("What is 1+2?")
    second = chat.reply("And 3+4?")
    assert [m["role"] for m in chat.messages()] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.history[1]["content"] == first
    # the second turn was prefilled only past the shared prefix; a fresh chat given the same history agrees
    fresh = Chat(model, tokenizer, system="be brief", temperature=0.0, max_tokens=8)
    fresh.history = chat.history[:2]
    assert fresh.reply("And 3+4?") == second
    assert 0 < chat.cache[0].size() == len(chat.cached)
    # a third turn feeds only what the cache lacks: at least the second turn's whole prompt is reused
    second_prompt = tokenizer.apply_chat_template(chat.messages()[:-1], add_generation_prompt=True)
    tokens = list(tokenizer.apply_chat_template(chat.messages() + [{"role": "user", "content": "Thanks"}],
                                                add_generation_prompt=True))
    new = chat._new_tokens(tokens)
    assert len(tokens) - len(new) >= len(second_prompt) and tokens[-len(new):] == new


def test_repl_commands(instruct):
    model, tokenizer = instruct
    chat, out, notes = Chat(model, tokenizer, temperature=0.0, max_tokens=6), [], []
    repl(chat, ["hi", "", "/system talk like a pirate", "/help", "again", "/reset", "/quit", "never read"],
         out.append, notes.append)
    assert chat.history == [] and chat.system == "talk like a pirate"
    assert notes[0] == "[system prompt set]" and notes[1].startswith("commands:") and notes[2] == "[history cleared]"
    assert out.count("\n") == 2  # two replies, each ended by a newline; "never read" was not answered


def test_ctrl_c_stops_a_reply_not_the_chat(instruct):
    model, tokenizer = instruct
    chat, notes, calls = Chat(model, tokenizer, temperature=0.0, max_tokens=6), [], []

    def write(piece):
        calls.append(piece)
        if len(calls) == 1:  # the first turn is interrupted while it streams
            raise KeyboardInterrupt
    repl(chat, ["first", "second"], write, notes.append)
    assert notes == ["\n[stopped]"]
    assert [m["content"] for m in chat.history if m["role"] == "user"] == ["second"]


def test_piped_two_turns_and_reset(llama_pair):
    """Greedy replies: after /reset the same message gets the same reply as a one-shot --prompt."""
    one_shot = gift_chat(llama_pair[1], "--prompt", "hello")
    assert one_shot.returncode == 0, one_shot.stderr
    assert one_shot.stdout.strip()
    piped = gift_chat(llama_pair[1], stdin="hello\nwhat is 2+3?\n/reset\nhello\n")
    assert piped.returncode == 0, piped.stderr
    assert "[history cleared]" in piped.stderr and ">>" not in piped.stdout  # no terminal prompt on a pipe
    assert piped.stdout.startswith(one_shot.stdout) and piped.stdout.endswith(one_shot.stdout)
    assert len(piped.stdout) > 2 * len(one_shot.stdout)  # the second turn answered in between


def test_a_model_with_a_nan_weight_stops_chat_before_any_output(nan_instruct):
    model, tokenizer, _ = load_model(nan_instruct)
    chat, out = Chat(model, tokenizer, temperature=0.7, max_tokens=6, name=str(nan_instruct)), []
    with pytest.raises(GiftError, match="logits are not finite"):
        chat.reply("hi", out.append)
    assert out == [] and chat.history == []
    for r in (gift_chat(nan_instruct, "--prompt", "hi"), gift_chat(nan_instruct, stdin="hi\nhello\n")):
        assert r.returncode == 2 and r.stdout == ""  # a piped chat stops too: no later turn could be answered
        assert r.stderr.strip().splitlines() == [f"error: {nan_instruct}: the model's logits are not finite "
                                                 "(NaN/Inf): its weights hold NaN/Inf values or its activations "
                                                 "overflow; nothing it generated is used"]

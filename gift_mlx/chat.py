"""`gift chat`: a local multi-turn chat with streaming output, through the model's chat template.

The KV cache is kept between turns: each turn the whole history is rendered through the template, the cache is
trimmed back to the longest prefix it shares with the new prompt, and only the rest is prefilled. That is exact
(the model sees the same tokens as a fresh run) and makes a long conversation cost only its new turn.
"""

import sys

from .config import SEED_RANGE, check_sampling, check_value
from .errors import GiftError
from .models import FiniteSampler, NonFiniteLogits

HELP = "commands: /reset (clear history), /system <text> (set the system prompt; empty clears it), /quit"


class Chat:
    def __init__(self, model, tokenizer, system=None, temperature=0.7, top_p=1.0, max_tokens=512, name="model"):
        from mlx_lm.sample_utils import make_sampler

        self.model, self.tokenizer, self.system, self.max_tokens = model, tokenizer, system, max_tokens
        self.sampler = FiniteSampler(make_sampler(temperature, top_p), name)  # non-finite logits: an error
        self.reset()

    def reset(self):
        """Forget the conversation (the system prompt stays)."""
        self.history, self.cache, self.cached = [], None, []

    def messages(self):
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def _new_tokens(self, tokens):
        """The part of `tokens` the cache does not hold yet, after trimming the cache to their common prefix."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
        from mlx_lm.utils import common_prefix_len

        if self.cache is None or not can_trim_prompt_cache(self.cache):
            self.cache, self.cached = make_prompt_cache(self.model), []
        keep = min(common_prefix_len(self.cached, tokens), len(tokens) - 1)  # at least one token must be fed
        trim_prompt_cache(self.cache, len(self.cached) - keep)
        self.cached = tokens[:keep]
        return tokens[keep:]

    def reply(self, text, write=None):
        """Answer a user turn, streaming text pieces to write(); the reply joins the history."""
        from mlx_lm.generate import stream_generate

        from .data import render

        self.history.append({"role": "user", "content": text})
        try:  # a system turn the template has no role for is folded into the first user turn (data.render)
            tokens = render(self.tokenizer, self.messages(), add_generation_prompt=True)
        except GiftError:  # the template refused the conversation: the turn is not kept
            self.history.pop()
            raise
        pieces, generated = [], []
        self.sampler.flags = []  # the last reply's final step made a token never shown
        try:
            for r in stream_generate(self.model, self.tokenizer, self._new_tokens(tokens), max_tokens=self.max_tokens,
                                     sampler=self.sampler, prompt_cache=self.cache):
                self.sampler.check()  # before the token is shown
                generated.append(r.token)
                pieces.append(r.text)
                if write and r.text:
                    write(r.text)
        except (KeyboardInterrupt, GiftError):  # a stopped reply leaves no half turn; the cache is rebuilt next turn
            self.history.pop()
            self.cache = None
            raise
        # The cache holds the prompt and (some of) the generated tokens; keep exactly the ones it holds.
        self.cached = (tokens + generated)[: self.cache[0].size()]
        reply = "".join(pieces)
        self.history.append({"role": "assistant", "content": reply})
        return reply


def check_text(name, text):
    """A message must be encodable: a lone surrogate (from a shell's broken bytes) cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GiftError(f"{name}: not valid Unicode ({e.reason} at position {e.start})")
    return text


def input_lines(interactive):
    """User lines: with a prompt and line editing at a terminal, plain lines from a pipe."""
    if interactive:
        while True:
            try:
                yield input(">> ")
            except EOFError:
                return
            except UnicodeDecodeError:
                print("[that line was not UTF-8; type it again]", file=sys.stderr)
    else:  # bytes that are not UTF-8 become U+FFFD instead of stopping the chat
        stream = getattr(sys.stdin, "buffer", None)
        for line in stream if stream is not None else sys.stdin:
            yield (line.decode("utf-8", "replace") if isinstance(line, bytes) else line).rstrip("\n")


def repl(chat, lines, write, note):
    """Run the chat over user lines: commands start with '/', anything else is a user turn."""
    for line in lines:
        text = line.encode("utf-8", "replace").decode("utf-8").strip()  # lone surrogates -> '?'
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            chat.reset()
            note("[history cleared]")
        elif text == "/system" or text.startswith("/system "):
            chat.system = text[len("/system"):].strip() or None
            note(f"[system prompt {'set' if chat.system else 'cleared'}]")
        elif text.startswith("/"):
            note(HELP)
        else:
            try:
                chat.reply(text, write)
            except KeyboardInterrupt:  # Ctrl-C stops a reply, not the chat
                note("\n[stopped]")
                continue
            except NonFiniteLogits:  # the model itself is broken: no later turn could be answered either
                raise
            except GiftError as e:  # the chat template refused this turn: say so, the chat goes on
                note(f"[error: {e}]")
                continue
            write("\n")


def chat(model_path, prompt=None, system=None, temperature=0.7, top_p=1.0, max_tokens=512, seed=None,
         trust_remote_code=False):
    """The `gift chat` command: one-shot with prompt, else a REPL over stdin (a terminal or a pipe)."""
    import mlx.core as mx

    from .models import cpu_float32, load_model

    check_sampling(temperature, top_p)
    check_value("--max-tokens", max_tokens, int, 1, 2**24)
    check_value("--seed", seed, int, *SEED_RANGE, optional=True)
    for name, text in (("--prompt", prompt), ("--system", system)):
        if text is not None:
            check_text(name, text)
    model, tokenizer, _ = load_model(model_path, trust_remote_code=trust_remote_code)
    cpu_float32(model, model_path, log=lambda message: None)  # stdout is the conversation
    if not getattr(tokenizer, "has_chat_template", False):
        raise GiftError(f"{model_path}: tokenizer has no chat template (chat needs an instruct/chat model)")
    if seed is not None:
        mx.random.seed(seed)
    session = Chat(model, tokenizer, system, temperature, top_p, max_tokens, name=model_path)

    def write(s):
        sys.stdout.write(s)
        sys.stdout.flush()  # stream each piece as it is generated

    def note(s):
        print(s, file=sys.stderr)

    if prompt is not None:
        session.reply(prompt, write)
        write("\n")
        return
    interactive = sys.stdin.isatty()
    if interactive:
        note(HELP)
    repl(session, input_lines(interactive), write, note)

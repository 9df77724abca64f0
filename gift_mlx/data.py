"""Training data: read JSONL records, format them with the instruct chat template, mark the target tokens,
and cut them into length-bucketed micro-batches."""

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlx_lm.utils import common_prefix_len

from .errors import GiftError

SPLITS = ("train", "valid", "test")
# (prompt field, response field) of the non-chat record shapes; Alpaca's "input" and a "system" may join them.
TRAINING_PAIRS = (("prompt", "completion"), ("instruction", "response"), ("instruction", "output"))


@dataclass
class Example:
    tokens: np.ndarray  # int32 (T,)
    target: np.ndarray  # bool (T,): tokens[i] is a target (response token or end-of-turn)

    @property
    def num_targets(self):
        return int(self.target.sum())


@dataclass
class Dataset:
    path: Path
    sha256: str
    examples: list
    truncated: int = 0  # rows cut to max_seq_length
    dropped: int = 0  # rows with no target left after truncation
    folded: int = 0  # rows whose system turn was folded into the first user turn (the template has no system role)
    turns: int = 0  # assistant turns
    missed: int = 0  # assistant turns left without targets (the template writes them differently in the conversation)

    def __len__(self):
        return len(self.examples)


def data_files(data):
    """{split: path} for a folder with train/valid/test.jsonl, or {"train": path} for a single file."""
    p = Path(data)
    if p.is_file():
        return {"train": p}
    if not p.is_dir():
        raise GiftError(f"{data}: no such data file or folder")
    files = {s: p / f"{s}.jsonl" for s in SPLITS if (p / f"{s}.jsonl").is_file()}
    if "train" not in files:
        raise GiftError(f"{data}: data folder has no train.jsonl")
    return files


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class NotJSON(ValueError):
    pass


def reject_constant(constant):  # json.loads' parse_constant: Python reads NaN and Infinity; JSON has neither
    raise NotJSON(f"{constant} is not a JSON value")


def read_jsonl(path):
    """[(line_number, record)] with file:line errors for unreadable or malformed lines.

    Lines end at "\n" only (JSON Lines): U+2028 and other Unicode line breaks are legal inside a string.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise GiftError(f"{path}: cannot read ({e})")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=reject_constant)
        except json.JSONDecodeError as e:
            raise GiftError(f"{path}:{n}: malformed JSON ({e.msg})")
        except NotJSON as e:
            raise GiftError(f"{path}:{n}: malformed JSON ({e})")
        except RecursionError:
            raise GiftError(f"{path}:{n}: JSON nested too deeply")
        if not isinstance(record, dict):
            raise GiftError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
        try:  # "\ud800" parses, but a lone surrogate is not text: no tokenizer or file can take it
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise GiftError(f"{path}:{n}: not valid Unicode (a lone surrogate \\u{ord(e.object[e.start]):04x} in a string)")
        except RecursionError:
            raise GiftError(f"{path}:{n}: JSON nested too deeply")
        rows.append((n, record))
    if not rows:
        raise GiftError(f"{path}: no records")
    return rows


def _text(record, key, where):
    value = record[key]
    if not isinstance(value, str):
        raise GiftError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def to_messages(record, where):
    """Chat messages for one record in any supported shape; the assistant turns are the targets."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise GiftError(f"{where}: 'messages' must be a list of {{role, content}} string objects")
        if not any(m["role"] == "assistant" for m in messages):
            raise GiftError(f"{where}: 'messages' has no assistant turn, so no target tokens")
        if messages[0]["role"] == "assistant":
            raise GiftError(f"{where}: 'messages' starts with an assistant turn; a response needs a prompt before it")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    for prompt_key, response_key in TRAINING_PAIRS:
        if prompt_key in record and response_key in record:
            prompt = _text(record, prompt_key, where)
            if record.get("input"):  # Alpaca-style extra context
                prompt += "\n\n" + _text(record, "input", where)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(record, response_key, where)}]
            if record.get("system"):
                messages.insert(0, {"role": "system", "content": _text(record, "system", where)})
            return messages
    raise GiftError(
        f"{where}: unknown record shape (fields: {', '.join(sorted(record)) or 'none'}); "
        "expected messages, prompt+completion or instruction+response"
    )


# ---- the instruct chat template ----------------------------------------------------------------------------

_PROBE_SYSTEM, _PROBE_USER, _PROBE_REPLY = "Probe system text 71.", "Probe question 72.", "Probe reply 73."


@dataclass(frozen=True)
class ChatFormat:
    """What gift needs to know of a tokenizer's chat template, found by rendering probe conversations."""

    model: str  # named in errors
    system: bool  # a leading system turn is rendered (else it is folded into the first user turn)
    ends: frozenset  # token ids that end an assistant turn: the eos ids and the token the template closes a reply with


_FORMATS = weakref.WeakKeyDictionary()  # probed once per tokenizer: eval renders one prompt per problem


def chat_format(tokenizer):
    if tokenizer not in _FORMATS:
        _FORMATS[tokenizer] = _probe(tokenizer)
    return _FORMATS[tokenizer]


def _probe(tokenizer):
    def text(messages):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:
            return None

    user = [{"role": "user", "content": _PROBE_USER}]
    # No system role: the template raises on it (Gemma 2, Mistral v0.1) or drops it; the user turn alone renders.
    with_system = text([{"role": "system", "content": _PROBE_SYSTEM}] + user)
    system = (with_system is not None and _PROBE_SYSTEM in with_system) or text(user) is None
    ends = set(tokenizer.eos_token_ids)
    reply = text(user + [{"role": "assistant", "content": _PROBE_REPLY}])
    if reply is not None and _PROBE_REPLY in reply:  # the first token after a reply, if a control token, ends it
        after = tokenizer.encode(reply[reply.rindex(_PROBE_REPLY) + len(_PROBE_REPLY):], add_special_tokens=False)
        if after and tokenizer.convert_ids_to_tokens(after[0]) in control_texts(tokenizer):
            ends.add(after[0])
    return ChatFormat(str(getattr(tokenizer, "name_or_path", "") or "the model"), system, frozenset(ends))


def fit_template(messages, tokenizer):
    """The messages as the template takes them: with no system role, a leading system turn is folded into the
    first user turn (system text, a blank line, user text), as Gemma 3's own template does."""
    leading_system = len(messages) > 1 and [m["role"] for m in messages[:2]] == ["system", "user"]
    if chat_format(tokenizer).system or not leading_system:
        return messages
    first = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
    return [first, *messages[2:]]


def apply_template(tokenizer, messages, where="", **kwargs):
    """tokenizer.apply_chat_template's tokens; whatever the template raises (jinja2's TemplateError from its
    raise_exception, a missing field, ...) becomes one `WHERE: chat template of MODEL: ...` error."""
    try:
        return list(tokenizer.apply_chat_template(messages, **kwargs))
    except Exception as e:
        message = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise GiftError(f"{where + ': ' if where else ''}chat template of {chat_format(tokenizer).model}: {message}") \
            from None


def render(tokenizer, messages, where="", **kwargs):
    """The conversation's tokens through the chat template (a system turn folded in where it has no role)."""
    return apply_template(tokenizer, fit_template(messages, tokenizer), where, **kwargs)


def reply_span(prompt, turn, tokens, after, ends):
    """(start, end) of an assistant reply in the conversation's tokens, or None when it is not there.

    The reply is what the model writes after `prompt` (its context rendered with add_generation_prompt) in
    `turn` (the conversation up to this reply, rendered last), up to and including its end-of-turn token.
    Usually the conversation holds it in the same place; a template that moves the system text into the
    last user turn (Mistral's) holds it later, after the same prompt token. A template that rewrites
    earlier replies (Qwen3 drops their reasoning and think block) holds it nowhere: no targets there.
    """
    k = common_prefix_len(prompt, turn)
    end = next((j + 1 for j in range(k, len(turn)) if turn[j] in ends), len(turn))
    reply = turn[k:end]
    if not reply:
        return None
    if k >= after and common_prefix_len(turn, tokens) >= end:
        return k, end
    for s in range(max(after, 1), len(tokens) - len(reply) + 1):
        if tokens[s] == reply[0] and (k == 0 or tokens[s - 1] == turn[k - 1]) and tokens[s : s + len(reply)] == reply:
            return s, s + len(reply)
    return None


def tokenize(messages, tokenizer, where=""):
    """Tokens of the whole conversation, the mask of its target tokens, and how many assistant turns got none.

    Each assistant turn's targets are its reply as the model writes it (reply_span), up to and including
    the end-of-turn token; what the template adds after it (e.g. a newline) is not a target.
    """
    tokens = apply_template(tokenizer, messages, where)
    target = np.zeros(len(tokens), bool)
    after, missed = 0, 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        span = reply_span(apply_template(tokenizer, messages[:i], where, add_generation_prompt=True),
                          apply_template(tokenizer, messages[: i + 1], where), tokens, after,
                          chat_format(tokenizer).ends)
        if span is None:
            missed += 1
            continue
        target[span[0] : span[1]] = True
        after = span[1]
    last = int(np.nonzero(target)[0][-1]) + 1 if target.any() else len(tokens)
    return np.array(tokens[:last], np.int32), target[:last], missed  # nothing after the last target is needed


def control_texts(tokenizer):
    """The texts the tokenizer reads as control tokens (end of turn, turn starts, ...)."""
    texts = set(getattr(tokenizer, "all_special_tokens", None) or [])
    texts |= {t.content for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values()
              if getattr(t, "special", False)}
    texts |= {tokenizer.convert_ids_to_tokens(i) for i in tokenizer.eos_token_ids}
    return sorted(t for t in texts if isinstance(t, str) and len(t) > 1)


def check_control_text(messages, controls, where):
    """A message holding the text of a control token (e.g. '<|im_end|>') would be tokenized as that token:
    the turn would end early in the model's eyes and the targets after it would be lost. Refused, not guessed."""
    for m in messages:
        for t in controls:
            if t in m["content"]:
                raise GiftError(f"{where}: the {m['role']} message contains the text {t!r}, which the tokenizer reads "
                                "as a control token (the turn would end there and later targets be lost); remove it")


def load_split(path, tokenizer, max_seq_length):
    """Read, format and tokenize one JSONL file."""
    examples, truncated, dropped, folded, turns, missed = [], 0, 0, 0, 0, 0
    controls = control_texts(tokenizer)
    for n, record in read_jsonl(path):
        where = f"{path}:{n}"
        messages = to_messages(record, where)
        check_control_text(messages, controls, where)
        fitted = fit_template(messages, tokenizer)
        folded += fitted is not messages
        tokens, target, lost = tokenize(fitted, tokenizer, where)
        turns += sum(m["role"] == "assistant" for m in fitted)
        missed += lost
        target[0] = False  # the first token has no context to be predicted from
        if not target.any():
            raise GiftError(f"{where}: record has no target tokens"
                            + (f" (the chat template of {chat_format(tokenizer).model} writes its assistant turns "
                               "differently inside the conversation than as the model's reply)" if lost else ""))
        if len(tokens) > max_seq_length:
            tokens, target = tokens[:max_seq_length], target[:max_seq_length]
            truncated += 1
            if not target.any():
                dropped += 1
                continue
        examples.append(Example(tokens, target))
    if not examples:
        raise GiftError(f"{path}: no usable rows (all {dropped} prompts are longer than max_seq_length={max_seq_length})")
    return Dataset(Path(path), file_sha256(path), examples, truncated, dropped, folded, turns, missed)


def load_data(data, tokenizer, max_seq_length, splits=("train", "valid"), log=print):
    """{split: Dataset} for the requested splits that exist (train must); says what the template changed."""
    files = data_files(data)
    out = {s: load_split(files[s], tokenizer, max_seq_length) for s in splits if s in files}
    folded = sum(ds.folded for ds in out.values())
    if folded:
        log(f"data: folded the system turn into the first user turn: the instruct template has no system role "
            f"({folded} rows)")
    for ds in out.values():
        if ds.missed:
            log(f"warning: {ds.path}: {ds.missed} of {ds.turns} assistant turns get no target tokens: the chat "
                f"template of {chat_format(tokenizer).model} writes them differently inside the conversation than "
                "as the model's reply (Qwen3's drops the reasoning of earlier turns); give each its own record "
                "to train it")
    return out


def fit_pad_lengths(lengths, max_len, k=8):
    """At most k padded lengths (multiples of 8, capped at max_len) that minimise the padding of these rows.

    The compiled step is traced once per batch shape, so batches are padded to one of a few lengths; fitting
    them to the data (exact dynamic programming over the rows' lengths rounded up to 8) pads less than a
    fixed geometric set of the same size.
    """
    lengths = np.asarray(lengths)
    cand = np.minimum(-(-lengths // 8) * 8, max_len)
    c, inv, counts = np.unique(cand, return_inverse=True, return_counts=True)
    rows = np.concatenate([[0], np.cumsum(counts)])  # rows with candidate index < j: rows[j]
    total = np.concatenate([[0], np.cumsum(np.bincount(inv, weights=lengths))])
    best = c * rows[1:] - total[1:]  # padding of candidates 0..j all padded to c[j]
    back = []  # back[t][j]: candidate where the previous length sits when t+2 lengths cover 0..j (-1: t+1 do)
    for _ in range(1, k):
        new, arg = best.copy(), np.full(len(c), -1)
        for j in range(1, len(c)):
            # previous length at c[i] (i < j) covers 0..i; rows of candidates i+1..j pad to c[j]
            cost = best[:j] + c[j] * (rows[j + 1] - rows[1 : j + 1]) - (total[j + 1] - total[1 : j + 1])
            i = int(cost.argmin())
            if cost[i] < new[j]:
                new[j], arg[j] = cost[i], i
        best = new
        back.append(arg)
    j, out = len(c) - 1, [int(c[-1])]
    for arg in reversed(back):
        if arg[j] >= 0:
            j = int(arg[j])
            out.append(int(c[j]))
    return sorted(out)


def collate(examples, weights, pad_lengths=None, pad_id=0):
    """Padded (inputs, labels, w) arrays for next-token prediction.

    w[b, i] is the weight of predicting labels[b, i] = tokens[i + 1]; zero for prompt and padding.
    `weights` holds, per example, one value per target token (None: uniform weight 1). Rows are padded to
    the smallest of `pad_lengths` that fits (compiled steps) or, without it, to the longest row.
    """
    longest = max(len(e.tokens) for e in examples) - 1
    length = next((n for n in pad_lengths or () if n >= longest), longest)
    inputs = np.full((len(examples), length), pad_id, np.int32)
    labels = np.full((len(examples), length), pad_id, np.int32)
    w = np.zeros((len(examples), length), np.float32)
    for b, (e, wt) in enumerate(zip(examples, weights)):
        n = len(e.tokens) - 1
        inputs[b, :n] = e.tokens[:-1]
        labels[b, :n] = e.tokens[1:]
        w[b, :n][e.target[1:]] = 1.0 if wt is None else wt
    return inputs, labels, w


def batch_order(lengths, batch_size, rng, window=64):
    """Micro-batches of example indices: shuffled, then sorted by length within windows of
    `window` batches so rows of a batch have similar lengths (little padding), batch order shuffled."""
    idx = rng.permutation(len(lengths))
    span = batch_size * window
    batches = []
    for s in range(0, len(idx), span):
        chunk = sorted(idx[s : s + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches

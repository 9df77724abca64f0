"""Chat templates in the formats of the model families users bring, for the toy tokenizer.

Each template is written here from the family's documented chat format (turn markers, roles, where the
system text goes, what closes a reply); they reproduce the behaviours gift must cope with, not every
feature of the originals (no tools). `family_tokenizer` gives the toy byte-level tokenizer the family's
control tokens, bos/eos and template.
"""

import json
from dataclasses import dataclass
from pathlib import Path

ALTERNATE = "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
# A leading system turn split off: `system` is its text ('' without one), `rest` the other turns.
SPLIT_SYSTEM = (
    "{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}{%- set rest = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- set rest = messages %}{%- endif %}"
)

CHATML = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2.5: ChatML with a default system turn when the conversation has none.
QWEN25 = (
    "{%- if messages[0].role != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}" + CHATML
)

# Qwen3: replies after the last user turn carry a think block (empty without reasoning); earlier replies lose
# their reasoning and the block; the generation prompt opens an empty one when thinking is switched off.
QWEN3 = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set answer = m.content %}{%- set thought = '' %}"
    "{%- if '</think>' in answer %}"
    "{%- set thought = answer.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set answer = answer.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_user %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + thought + '\\n</think>\\n\\n' + answer + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + answer + '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Llama 3.x: header tokens around the role, trimmed content, <|eot_id|> closing every turn; a system header
# (with the knowledge date) always comes first.
LLAMA3 = (
    "{{- bos_token }}" + SPLIT_SYSTEM
    + "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n\\n'"
    " + system + '<|eot_id|>' }}"
    "{%- for m in rest %}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _gemma(system_rule):
    """Gemma: <start_of_turn>user|model ... <end_of_turn>, strictly alternating, trimmed content."""
    return (
        "{{- bos_token }}" + SPLIT_SYSTEM + system_rule
        + "{%- for m in rest %}"
        "{%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}" + ALTERNATE + "{%- endif %}"
        "{%- set first = (system + '\\n\\n') if (loop.first and system) else '' %}"
        "{{- '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\\n' + first"
        " + (m.content | trim) + '<end_of_turn>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
    )


GEMMA2 = _gemma("{%- if system %}{{- raise_exception('System role not supported') }}{%- endif %}")
GEMMA3 = _gemma("")  # the template itself folds the system text into the first user turn

# Mistral v0.1: [INST] ... [/INST] reply</s>, roles must alternate from a user turn (so a system turn raises).
MISTRAL = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}" + ALTERNATE + "{%- endif %}"
    "{%- if m.role == 'user' %}{{- '[INST] ' + m.content + ' [/INST]' }}"
    "{%- else %}{{- m.content + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

# Mistral v0.3: the system text goes into the LAST user turn; a space opens each reply.
MISTRAL3 = (
    SPLIT_SYSTEM + "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in rest %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{{- bos_token }}{%- for m in rest %}"
    "{%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}" + ALTERNATE + "{%- endif %}"
    "{%- if m.role == 'user' %}"
    "{%- if loop.index0 == ns.last_user and system %}{{- '[INST] ' + system + '\\n\\n' + m.content + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + m.content + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + (m.content | trim) + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

# Phi-3: <|role|>\n ... <|end|>\n, the conversation closed by the eos token.
PHI3 = (
    "{%- for m in messages %}{{- '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"
)

# An early Phi-3 form: a system turn is silently left out, each user turn opens the assistant's.
PHI3_NO_SYSTEM = (
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{- '<|user|>\\n' + m.content + '<|end|>\\n<|assistant|>\\n' }}"
    "{%- elif m.role == 'assistant' %}{{- m.content + '<|end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
)

# SmolLM3: ChatML with a metadata system turn always written; '/no_think' in the system text switches
# reasoning off, and then every reply (and the generation prompt) carries an empty think block.
SMOLLM3 = (
    SPLIT_SYSTEM + "{%- set think = '/no_think' not in system %}"
    "{{- '<|im_start|>system\\n## Metadata\\n\\nReasoning Mode: ' + ('/think' if think else '/no_think')"
    " + '\\n\\n## Custom Instructions\\n\\n' + system.replace('/no_think', '').strip() + '<|im_end|>\\n' }}"
    "{%- for m in rest %}"
    "{%- if m.role == 'assistant' and not think %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' + ('' if think else '<think>\\n\\n</think>\\n') }}"
    "{%- endif %}"
)

# OLMo 2: plain-text role markers, a reply closed by the eos token (a newline after it unless last).
OLMO2 = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}{{- '<|assistant|>\\n' + m.content + eos_token + ('' if loop.last else '\\n') }}"
    "{%- else %}{{- '<|' + m.role + '|>\\n' + m.content + '\\n' }}{%- endif %}"
    "{%- if loop.last and add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
    "{%- endfor %}"
)

# Granite 3: <|start_of_role|>role<|end_of_role|> ... <|end_of_text|>\n, a default system turn.
GRANITE = (
    SPLIT_SYSTEM + "{%- set system = system or 'You are a helpful AI assistant.' %}"
    "{{- '<|start_of_role|>system<|end_of_role|>' + system + '<|end_of_text|>\\n' }}"
    "{%- for m in rest %}{{- '<|start_of_role|>' + m.role + '<|end_of_role|>' + m.content + '<|end_of_text|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    eos: str
    end: str  # the text that closes a reply (the end-of-turn token)
    specials: tuple = ()  # control tokens added to the toy tokenizer
    plain: tuple = ()  # added tokens that are not control tokens
    bos: str = None
    folds: bool = False  # the template has no system role: gift folds the system turn into the first user turn
    opens: str = ""  # what the template writes before the reply text (a space, a think block)
    rewrites_earlier: bool = False  # earlier replies are written differently (no targets there)

    def reply(self, content, last):
        """The text the targets of a reply decode to, or None when the reply gets none."""
        if self.rewrites_earlier and not last:
            return None
        return self.opens + content + self.end


THINK = ("<think>", "</think>")
FAMILIES = [
    Family("chatml", CHATML, "<|im_end|>", "<|im_end|>"),
    Family("qwen2.5", QWEN25, "<|im_end|>", "<|im_end|>"),
    Family("qwen3", QWEN3, "<|im_end|>", "<|im_end|>", plain=THINK, opens="<think>\n\n</think>\n\n",
           rewrites_earlier=True),
    Family("llama3", LLAMA3, "<|end_of_text|>", "<|eot_id|>", bos="<|begin_of_text|>",  # eos is not the turn's end
           specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    Family("gemma2", GEMMA2, "<eos>", "<end_of_turn>", bos="<bos>", folds=True,
           specials=("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")),
    Family("gemma3", GEMMA3, "<eos>", "<end_of_turn>", bos="<bos>",
           specials=("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")),
    Family("mistral", MISTRAL, "</s>", "</s>", bos="<s>", folds=True, specials=("<s>", "</s>", "[INST]", "[/INST]")),
    Family("mistral3", MISTRAL3, "</s>", "</s>", bos="<s>", opens=" ", specials=("<s>", "</s>", "[INST]", "[/INST]")),
    Family("phi3", PHI3, "<|endoftext|>", "<|end|>", specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    Family("phi3-no-system", PHI3_NO_SYSTEM, "<|endoftext|>", "<|end|>", folds=True,
           specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    Family("smollm3", SMOLLM3, "<|im_end|>", "<|im_end|>", plain=THINK),
    Family("olmo2", OLMO2, "<|endoftext|>", "<|endoftext|>", bos="<|endoftext|>"),
    Family("granite", GRANITE, "<|end_of_text|>", "<|end_of_text|>",
           specials=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>")),
]
BY_NAME = {f.name: f for f in FAMILIES}


def write_family_tokenizer(toy_tokenizer_dir, out_dir, family):
    """A copy of the toy tokenizer (tokenizer.json of toy.build_tokenizer) with the family's tokens and template."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(Path(toy_tokenizer_dir) / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in family.specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.plain])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": family.template, "eos_token": family.eos,
              "bos_token": family.bos, "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out

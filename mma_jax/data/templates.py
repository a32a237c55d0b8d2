"""Chat templates: how a conversation is written out as text, per model family.

chat.encode renders a record with a Template into pieces of text, each with its role (prompt or
response), turn and modality, tokenizes the whole text once, and gives every token the role of
the piece its first character is in. The ids are therefore exactly those of the family's own
template applied to the same conversation (tests/data/test_templates.py checks this against
transformers' apply_chat_template), and the loss spans never come from re-tokenizing substrings.
"""
from __future__ import annotations

import dataclasses
import re

LLAMA31_DATE = "26 Jul 2024"  # Llama 3.1's template default; 3.2's writes today's date
AKI_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
              "assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclasses.dataclass(frozen=True)
class Template:
  """One family's conversation format. Strings are written verbatim; {system} is substituted.

  bos:               once at the start of an example.
  system:            the system block, '' = the family writes none; default_system is used when
                     the record has no system message ('' = no system block, unless
                     system_always: then the block is written with an empty message).
  user_start/end:    around each user message (its images and text).
  assistant_start:   the generation prompt (prompt role); assistant_end follows each answer
                     (response role: the model learns to end its answers).
  conversation_end:  after the last answer (response role).
  image:             the placeholder token, repeated tokens_per_image times per image.
  image_sep:         between a message's images and its text.
  stop:              the token that ends a generated answer; extra_stops: other tokens that
                     end one too (a checkpoint's eos when it differs from the template's end).
  pt_end:            PT: after the caption.
  trim:              strip whitespace around message contents (Llama 3 does).
  """
  name: str
  bos: str = ""
  system: str = ""
  default_system: str = ""
  system_always: bool = False
  user_start: str = ""
  user_end: str = ""
  assistant_start: str = ""
  assistant_end: str = ""
  conversation_end: str = ""
  image: str = "<image>"
  image_sep: str = "\n"
  stop: str = ""
  extra_stops: tuple[str, ...] = ()
  pt_end: str = "<|endofchunk|>"
  pad: str = "<pad>"
  trim: bool = False

  def special_tokens(self) -> tuple[str, ...]:
    """Tokens the tokenizer must hold whole: every tag the template writes (<s>, <|user|>, ...)."""
    fields = (self.bos, self.system, self.user_start, self.user_end, self.assistant_start,
              self.assistant_end, self.conversation_end, self.image, self.stop, self.pt_end)
    return tuple(dict.fromkeys(t for f in fields for t in _TAG.findall(f)))

  def added_tokens(self) -> tuple[str, ...]:
    """The tokens a VLM adds to a text-only LLM's tokenizer for this template."""
    return tuple(t for t in (self.image, self.pt_end) if t)


_TAG = re.compile(r"</?s>|<\|?[A-Za-z_]+\|?>")


def _shapes_system():
  from mma_jax.data.shapes import generate
  return generate.SYSTEM


TEMPLATES = {
    # The built-in benchmark's word-level tokenizer; the AKI / Phi-3.5 layout.
    "shapes": Template("shapes", bos="<s>", system="<|system|>\n{system}<|end|>\n",
                       default_system="", user_start="<|user|>\n", user_end="<|end|>\n",
                       assistant_start="<|assistant|>\n", assistant_end="<|end|>", stop="<|end|>"),
    # Sony/AKI-4B-phi-3.5-mini (its demo writes a literal '<s> ' and ends answers with </s>).
    "aki": Template("aki", bos="<s> ", system="<|system|>\n{system}<|end|>\n",
                    default_system=AKI_SYSTEM, user_start="<|user|>\n", user_end="<|end|>\n",
                    assistant_start="<|assistant|>\n", assistant_end="</s>", stop="</s>",
                    # trained with add_eos_token, so the tokenizer's eos may end answers too
                    extra_stops=("<|endoftext|>", "<|end|>")),
    # Llama 3.0 instruct: header blocks, contents trimmed, system only when given.
    "llama3": Template("llama3", bos="<|begin_of_text|>",
                       system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
                       user_start="<|start_header_id|>user<|end_header_id|>\n\n",
                       user_end="<|eot_id|>",
                       assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
                       assistant_end="<|eot_id|>", stop="<|eot_id|>",
                       pad="<|finetune_right_pad_id|>", trim=True),
    # Llama 3.1 / 3.2 instruct: as 3.0, but the system block is always written and opens with
    # the knowledge cutoff and a date (the template's default date, fixed for reproducible ids).
    "llama3.1": Template("llama3.1", bos="<|begin_of_text|>",
                         system="<|start_header_id|>system<|end_header_id|>\n\n"
                                f"Cutting Knowledge Date: December 2023\nToday Date: {LLAMA31_DATE}"
                                "\n\n{system}<|eot_id|>", system_always=True,
                         user_start="<|start_header_id|>user<|end_header_id|>\n\n",
                         user_end="<|eot_id|>",
                         assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
                         assistant_end="<|eot_id|>", stop="<|eot_id|>",
                         extra_stops=("<|eom_id|>", "<|end_of_text|>"),
                         pad="<|finetune_right_pad_id|>", trim=True),
    # Qwen2.5 instruct: ChatML with Qwen's default system prompt.
    "qwen2.5": Template("qwen2.5", system="<|im_start|>system\n{system}<|im_end|>\n",
                        default_system="You are Qwen, created by Alibaba Cloud. You are a "
                                       "helpful assistant.",
                        user_start="<|im_start|>user\n", user_end="<|im_end|>\n",
                        assistant_start="<|im_start|>assistant\n", assistant_end="<|im_end|>\n",
                        stop="<|im_end|>", pad="<|endoftext|>"),
    # Phi-3.5-mini-instruct: role tags, <|end|> after each message, eos closes a conversation.
    "phi3.5": Template("phi3.5", system="<|system|>\n{system}<|end|>\n",
                       user_start="<|user|>\n", user_end="<|end|>\n",
                       assistant_start="<|assistant|>\n", assistant_end="<|end|>\n",
                       conversation_end="<|endoftext|>", stop="<|end|>",
                       extra_stops=("<|endoftext|>",), pad="<|endoftext|>"),
}


def get(name: str) -> Template:
  if name not in TEMPLATES:
    raise ValueError(f"Unknown chat template {name!r}; choose one of {sorted(TEMPLATES)}.")
  t = TEMPLATES[name]
  if name == "shapes" and not t.default_system:
    t = dataclasses.replace(t, default_system=_shapes_system())
  return t

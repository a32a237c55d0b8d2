"""What the study compares: its variants (config file, step budget, label, PT run), the PT runs
they start from, and the config keys the study sets itself."""
from __future__ import annotations

import dataclasses

BASELINE = "causal"


@dataclasses.dataclass(frozen=True)
class Variant:
  config_file: str    # under the configs directory
  step_factor: int    # config.train.steps = step_factor x --steps
  label: str
  pt: str = "pt"      # the PT run (PT_RUNS) its SFT starts from
  # Config keys the study sets for this variant alone, e.g. (("data.turns", 2),): its data
  # differs from the others', so its verdict is against `against`, the variant on that data.
  overrides: tuple = ()
  against: str = ""


# An instruction for MMA in PT: captions have no prompt text, so without one MMA equals causal
# in PT. Only words of the shapes benchmark (easy and hard), which the word-level tokenizer knows.
PT_PROMPT = "what is there ?"
# PT run -> keys set on configs/pt.py for it. The study sets them, so an override of one is
# refused whenever that run is planned.
PT_RUNS = {
    "pt": {},
    "pt_prompt": {"mask": "mma", "data.pt_prompt": PT_PROMPT},
}


VARIANTS = {
    "causal": Variant("sft_causal.py", 1, "causal I&T"),
    "reversed": Variant("sft_reversed.py", 1, "reversed T&I (causal)"),
    "dot": Variant("sft_dot.py", 1, "DOT: T&I then I&T (2x steps)"),
    "causal_2x": Variant("sft_causal.py", 2, "causal I&T, 2x steps (DOT's control)"),
    "mma": Variant("sft_mma.py", 1, "MMA I&T"),
    "prefix": Variant("sft_prefix.py", 1, "prefix-LM I&T"),
    # The paper's open question on multi-turn grouping: images see every turn's question. A
    # KV cache cannot decode this (see mma_jax/masks.py): an upper bound, not a method.
    "mma_conversation": Variant("sft_mma_conversation.py", 1,
                                "MMA across turns (upper bound, not decodable)"),
    # The paper's open question on MMA in PT: mma's SFT, from the PT run where the images saw
    # an instruction, so the difference to mma is the PT alone.
    "mma_pt_prompt": Variant("sft_mma.py", 1, "MMA I&T after PT with a prompt (MMA in PT)",
                             pt="pt_prompt"),
    # The multi-turn question on two-turn records (data.turns=2: a question about one cell, then
    # the scored one): under mma the image sees only the first question, under
    # mma_conversation the scored one too. Scored on the same questions as the one-turn runs.
    "mma_2turn": Variant("sft_mma.py", 1, "MMA I&T, two-turn records",
                         overrides=(("data.turns", 2),)),
    "mma_conversation_2turn": Variant(
        "sft_mma_conversation.py", 1, "MMA across turns, two-turn records (upper bound)",
        overrides=(("data.turns", 2),), against="mma_2turn"),
}
# Set by the study for every run; an override of one of them would break the comparison.
FIXED_KEYS = ("stage", "mask", "data.order", "init_from", "seed", "data.shuffle_seed",
              "train.steps")

"""An offline, byte-level tokenizer for tests.

Tests must never download a model, yet the data pipeline has to be exercised
through a real ``PreTrainedTokenizerFast`` with a chat template, exactly as the
default SmolLM2-Instruct model would be. Byte-level BPE with no merges covers
any text with 256 base tokens, so the vocabulary stays tiny (< 300) and the
embedding tables of tiny random test models stay small.
"""

from __future__ import annotations

import copy
import functools

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: Special tokens, in id order after the 256 byte tokens.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")

#: ChatML, as used by SmolLM2-Instruct: an assistant turn ends with
#: ``<|im_end|>``, which is also the eos token, so "generate until eos" stops
#: exactly at the end of the answer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _build() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    # Added here (not by the wrapper) so their ids are fixed: 256, 257, ... in order.
    core.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token=None,
        additional_special_tokens=["</s>", "<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Return a fresh byte-level tokenizer with ChatML special tokens.

    The expensive build is cached; each call returns a deep copy so a caller
    that mutates it (e.g. drops the chat template) cannot affect others.
    """
    return copy.deepcopy(_build())

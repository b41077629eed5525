"""Word-level tokenizer for the zoo language.

One token per whitespace-separated word; the special tokens ``<bos>``, ``<eos>``, ``<pad>`` and
``<unk>`` take ids 0–3. A post-processor prepends ``<bos>`` to every sequence encoded with
``add_special_tokens=True`` (the default), and it is saved with the tokenizer, so
``AutoTokenizer.from_pretrained(dir)`` encodes identically. Unknown words silently become
``<unk>``; use :func:`unknown_words` to reject them in task files.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>", "<unk>")


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (ids 4, 5, … in order) that prepends ``<bos>``.

    Raises:
        ValueError: if ``words`` has duplicates, whitespace inside a word, or a special token.
    """
    if len(set(words)) != len(words):
        raise ValueError("words must not contain duplicates")
    if any(not w or w != "".join(w.split()) or w in SPECIAL_TOKENS for w in words):
        raise ValueError("words must be non-empty, without whitespace, and not special tokens")
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A $B",
        special_tokens=[("<bos>", vocab["<bos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def unknown_words(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    """Words of ``text`` missing from the tokenizer's vocabulary, once each, in order of use."""
    vocab = tokenizer.get_vocab()
    return list(dict.fromkeys(w for w in text.split() if w not in vocab))

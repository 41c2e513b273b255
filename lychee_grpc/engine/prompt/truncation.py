"""Truncation: a document over its token limit keeps the first tokens of its text (images are
never cut). The result is a plain document of the kept text, so its score is that document's
score; tokens can merge differently across the new end, so each cut is checked by tokenizing the
whole prompt again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..types import Document, ImagePart, Part, TextPart

# Tries before a document whose cuts keep merging past the limit is refused instead.
MAX_CUTS = 8


def text_head(doc: Document, chars: int) -> Document:
    """`doc` with its text parts cut to `chars` characters in all (images kept in place)."""
    parts: list[Part] = []
    for part in doc.parts:
        if isinstance(part, TextPart):
            if chars <= 0 and parts:
                continue  # an empty text part renders as nothing; a document keeps its first part
            part = TextPart(part.text[: max(0, chars)])
            chars -= len(part.text)
        parts.append(part)
    return Document(doc.id, tuple(parts))


# `tokenizer` is a transformers tokenizer, untyped upstream: Any, as everywhere it is passed.
def cut_text(tokenizer: Any, parts: Sequence[Part], excess: int) -> list[Part] | None:
    """`parts` with about `excess` tokens cut from the end of their text (at a token boundary);
    images are kept, and so is each part's place (an emptied text part renders as nothing).
    None when the text runs out first."""
    out = list(parts)
    for i in range(len(out) - 1, -1, -1):
        part = out[i]
        if excess <= 0:
            break
        if not isinstance(part, TextPart) or not part.text:
            continue
        offsets = tokenizer(part.text, add_special_tokens=False, return_offsets_mapping=True,
                            split_special_tokens=True)["offset_mapping"]
        if len(offsets) <= excess:
            excess -= len(offsets)
            out[i] = TextPart("")
            continue
        kept = part.text[: offsets[len(offsets) - excess][0]]
        excess = 0
        out[i] = TextPart(kept if kept.strip() else "")
    if excess > 0 or not any(isinstance(p, ImagePart) or p.text for p in out):
        return None
    return out


def truncate(
    tokenizer: Any,  # see cut_text
    doc: Document,
    prompt_ids: Callable[[Sequence[Part]], np.ndarray],
    shared: int,
    limit: int,
    tokens: int,
) -> tuple[Document, np.ndarray] | None:
    """The document with the end of its text cut so that it fits `limit` tokens, and its whole
    prompt's ids (`prompt_ids(parts)`, of which the first `shared` are the request's prefix);
    None when it cannot fit (its images alone exceed the limit)."""
    parts: list[Part] | None = list(doc.parts)
    for _ in range(MAX_CUTS):
        parts = cut_text(tokenizer, parts, tokens - limit)
        if parts is None:
            return None
        ids = prompt_ids(parts)
        tokens = ids.size - shared
        if tokens <= limit:
            return Document(doc.id, tuple(parts)), ids
    return None

"""The Lychee-Rerank-MM prompt: the one place that knows its wording and layout.

<|im_start|>system
{SYSTEM_PROMPT}<|im_end|>
<|im_start|>user
<Instruct>: {instruction}<Query>:{query parts}
<Document>:{document parts}<|im_end|>
<|im_start|>assistant

Parts keep their order; text parts are concatenated with no separator; an image part is
`<|vision_start|><|image_pad|><|vision_end|>` (the pad is expanded to one token per merged
patch before tokenization).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..types import ImagePart, Part, TextPart

SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
ECOMMERCE_INSTRUCTION = (
    "Given an e-commerce search query, rank product titles by their relevance to the user's need"
)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"


def render_parts(parts: Sequence[Part], image_tokens: Sequence[int] | None = None) -> str:
    """Text of a part list. `image_tokens[i]` pads the i-th image; None leaves one pad each."""
    out: list[str] = []
    image_index = 0
    for part in parts:
        if isinstance(part, TextPart):
            out.append(part.text)
        elif isinstance(part, ImagePart):
            count = 1 if image_tokens is None else image_tokens[image_index]
            out.append(VISION_START + IMAGE_PAD * count + VISION_END)
            image_index += 1
        else:  # pragma: no cover - guarded by the type
            raise TypeError(f"unknown part {type(part).__name__}")
    return "".join(out)


def prefix_text(instruction: str, query: str) -> str:
    """Everything before the document: shared by every document of a request."""
    return (
        f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n"
        f"{IM_START}user\n<Instruct>: {instruction}<Query>:{query}"
    )


def suffix_text(document: str) -> str:
    """Everything from the document on, up to the generation prompt."""
    return f"\n<Document>:{document}{IM_END}\n{IM_START}assistant\n"


def render_prompt(instruction: str, query: str, document: str) -> str:
    """The whole prompt for one pair; `query` and `document` are rendered part lists."""
    return prefix_text(instruction, query) + suffix_text(document)

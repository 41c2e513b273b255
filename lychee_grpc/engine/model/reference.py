"""The plain way to score with Lychee-Rerank-MM: the chat template, the processor, a left-padded
`model.forward`, softmax over the yes/no logits at the last position.

Deliberately independent of the fast path (it uses the checkpoint's chat template rather than
`template.py`, and transformers' own position and attention code): the parity tests and the
benchmark compare the server against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..prompt.template import SYSTEM_PROMPT
from ..types import ImagePart, Part


def chat_messages(instruction: str, query: Sequence[Part], document: Sequence[Part]) -> list[dict]:
    content: list[dict] = [{"type": "text", "text": f"<Instruct>: {instruction}<Query>:"}]
    for part in query:
        content.append({"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text})
    content.append({"type": "text", "text": "\n<Document>:"})
    for part in document:
        content.append({"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text})
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": content},
    ]


def reference_prompt(processor, instruction: str, query: Sequence[Part], document: Sequence[Part]) -> str:
    return processor.apply_chat_template(
        chat_messages(instruction, query, document), tokenize=False, add_generation_prompt=True
    )


def _images(parts: Sequence[Part]):
    from PIL import Image

    from ..config import ImageLimits
    from ..prompt.images import decode_image

    return [
        Image.fromarray(p.picture.pixels, "RGB") if p.picture is not None else decode_image(p.data, ImageLimits())
        for p in parts if isinstance(p, ImagePart)
    ]


@torch.inference_mode()
def reference_logits(
    model,
    processor,
    instruction: str,
    query: Sequence[Part],
    documents: Sequence[Sequence[Part]],
    batch_size: int = 1,
) -> torch.Tensor:
    """z_yes - z_no for each document, batch_size pairs per left-padded forward."""
    tok = processor.tokenizer
    yes_id = tok.convert_tokens_to_ids("yes")
    no_id = tok.convert_tokens_to_ids("no")
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(documents), batch_size):
        chunk = documents[start : start + batch_size]
        prompts = [reference_prompt(processor, instruction, query, doc) for doc in chunk]
        images = [im for doc in chunk for im in _images(query) + _images(doc)]
        inputs = processor(
            text=prompts,
            images=images or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            return_mm_token_type_ids=True,
        ).to(device)
        model.model.rope_deltas = None  # transformers keeps this between calls
        logits = model(**inputs, logits_to_keep=1).logits[:, -1, :].float()
        out.append((logits[:, yes_id] - logits[:, no_id]).cpu())
    return torch.cat(out)


def plain_text_prompt_ids(tokenizer, instruction: str, query: str, document: str) -> list[int]:
    """The ids of a text-only prompt with the user's texts tokenized as plain text (their
    special-token strings are ordinary text), built from the chat layout with the tokenizer's own
    `split_special_tokens`: independent of `template.py`'s pieces, for the injection tests."""

    def special(token: str) -> list[int]:
        return [tokenizer.convert_tokens_to_ids(token)]

    def plain(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    return (special("<|im_start|>") + plain(f"system\n{SYSTEM_PROMPT}") + special("<|im_end|>") + plain("\n")
            + special("<|im_start|>") + plain(f"user\n<Instruct>: {instruction}<Query>:{query}\n<Document>:{document}")
            + special("<|im_end|>") + plain("\n") + special("<|im_start|>") + plain("assistant\n"))


@torch.inference_mode()
def reference_logits_from_ids(model, processor, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """z_yes - z_no for text-only prompts given as token ids, one plain `model.forward` each."""
    tok = processor.tokenizer
    yes_id, no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    device = next(model.parameters()).device
    out = []
    for ids in prompts:
        model.model.rope_deltas = None
        logits = model(input_ids=torch.tensor([list(ids)], device=device), logits_to_keep=1).logits[0, -1].float()
        out.append(float(logits[yes_id] - logits[no_id]))
    return torch.tensor(out)

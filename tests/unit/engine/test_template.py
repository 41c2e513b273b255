"""The rendered prompt is exactly the reference template, for every part combination."""

from __future__ import annotations

import pytest

from lychee_grpc.engine.model.reference import reference_prompt
from lychee_grpc.engine.prompt import template
from lychee_grpc.engine.types import ImagePart, TextPart

from ...helpers import pair_cases

EXPECTED_TEXT_PROMPT = (
    "<|im_start|>system\n"
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query"
    "<Query>:retro denim jacket\n"
    "<Document>:vintage jeans<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_text_prompt_is_the_reference_string():
    prompt = template.render_prompt(template.DEFAULT_INSTRUCTION, "retro denim jacket", "vintage jeans")
    assert prompt == EXPECTED_TEXT_PROMPT


def test_image_part_renders_vision_tokens_in_order():
    parts = (TextPart("a"), ImagePart(b"x"), TextPart("b"), ImagePart(b"y"))
    assert template.render_parts(parts) == "a<|vision_start|><|image_pad|><|vision_end|>b" \
        "<|vision_start|><|image_pad|><|vision_end|>"
    assert template.render_parts(parts, [2, 1]).count("<|image_pad|>") == 3


@pytest.mark.parametrize("case", list(pair_cases()))
@pytest.mark.parametrize("instruction", [template.DEFAULT_INSTRUCTION, template.ECOMMERCE_INSTRUCTION])
def test_prompt_equals_chat_template_rendering(loaded, case, instruction):
    query, docs = pair_cases()[case]
    for doc in docs:
        ours = template.render_prompt(
            instruction, template.render_parts(query.parts), template.render_parts(doc.parts)
        )
        assert ours == reference_prompt(loaded.processor, instruction, query.parts, doc.parts)

"""A huge text is refused from its length before the tokenizer sees it, and the length bound
never refuses a text whose tokens fit."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.errors import InvalidInput
from lychee_grpc.engine.types import Document, Query, TextPart


async def test_a_huge_document_is_refused_at_once_naming_its_part(make_engine):
    engine = await make_engine()
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as err:
        await score_documents(engine, Query((TextPart("q"),)), [Document("a", (TextPart("ok"),)),
                                                      Document("b", (TextPart("jacket " * 3_000_000),))])
    assert time.perf_counter() - started < 1.0
    assert [v.field for v in err.value.violations] == ["documents[1].parts[0].text"]


async def test_huge_query_and_instruction_are_refused_naming_the_field(make_engine):
    engine = await make_engine()
    with pytest.raises(InvalidInput) as err:
        await score_documents(engine, Query((TextPart("x " * 2_000_000),)), [Document("a", (TextPart("d"),))],
                            instruction="y " * 2_000_000)
    assert sorted(v.field for v in err.value.violations) == ["instruction", "query.parts[0].text"]


async def test_the_length_bound_never_refuses_text_that_fits(make_engine):
    engine = await make_engine()
    pre = engine.preprocessor

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.text(st.characters(exclude_categories=("Cs",)), max_size=400), st.integers(1, 64))
    def check(text, limit):
        if pre.certainly_over(text, limit):
            assert len(pre.plain_text([text])[0]) > limit

    check()
    # The densest text there is for this vocabulary still fits the bound.
    longest = max(pre.tokenizer.get_vocab(), key=len)
    text = pre.tokenizer.convert_tokens_to_string([longest]) * 10
    assert not pre.certainly_over(text, len(pre.plain_text([text])[0]))

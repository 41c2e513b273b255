"""Images from base64 and data: URLs, JSON objects into ordered parts, and field names back."""

from __future__ import annotations

import base64

import pytest

from lychee_grpc.http.app import field_path
from lychee_grpc.http.convert import convert_input, decode_image, rerank_inputs
from lychee_grpc.http.schemas import QueryObject, RerankRequest
from lychee_grpc.service.errors import FieldViolation, InvalidInput, TooLarge
from lychee_grpc.service.types import ImagePart, TextPart

PNG = b"\x89PNG\r\n\x1a\nfake"
B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize("value", [
    B64,
    f"data:image/png;base64,{B64}",
    f"DATA:image/png;name=x.png;base64,{B64}",
    B64.rstrip("="),  # padding left off
    B64[:8] + "\n" + B64[8:],  # wrapped lines
])
def test_base64_and_data_urls_decode_to_the_bytes(value):
    assert decode_image(value, "query.image") == PNG


@pytest.mark.parametrize(("value", "words"), [
    ("%%%not base64", "not valid base64"),
    ("data:image/png,rawbytes", "must be base64"),
    ("https://example.com/a.png", "not fetched"),
    ("data:image/png;base64,", "empty"),
])
def test_undecodable_images_name_the_field(value, words):
    with pytest.raises(InvalidInput) as info:
        decode_image(value, "documents[3].image")
    assert info.value.violations[0].field == "documents[3].image"
    assert words in info.value.violations[0].description


def test_an_object_with_both_puts_the_image_first():
    converted = convert_input(QueryObject(text="denim", image=B64), "query", [])
    assert converted.parts == (ImagePart(PNG), TextPart("denim"))
    assert converted.paths == ("query.image", "query.text")


def test_strings_are_text_documents_and_ids_default_to_the_index():
    request = RerankRequest(query="q", documents=["a", {"id": "sku-9", "text": "b"}])
    docs = rerank_inputs(request.query, request.documents).documents
    assert [(d.id, d.parts) for d in docs] == [("0", (TextPart("a"),)), ("sku-9", (TextPart("b"),))]


def test_vllm_content_parts_keep_their_order_and_a_single_object_is_one_document():
    request = RerankRequest.model_validate({"query": {"content": [{"type": "text", "text": "q"}]}, "documents": {
        "content": [{"type": "text", "text": "sofa"}, {"type": "image_url", "image_url": {"url": f"data:image/png;"
                                                                                                f"base64,{B64}"}}]}})
    inputs = rerank_inputs(request.query, request.documents)
    assert inputs.query.parts == (TextPart("q"),)
    assert [d.parts for d in inputs.documents] == [(TextPart("sofa"), ImagePart(PNG))]
    assert inputs.document_paths == [("documents[0].content[0].text", "documents[0].content[1].image_url.url")]


def test_cohere_rank_fields_score_the_named_fields_as_key_value_lines():
    request = RerankRequest.model_validate({"query": "q", "rank_fields": ["title", "text"], "documents": [
        {"title": "Denim jacket", "text": "Vintage wash", "brand": "Levi"}, {"text": "Only text"}]})
    docs = rerank_inputs(request.query, request.documents, request.rank_fields).documents
    assert docs[0].parts == (TextPart("title: Denim jacket\ntext: Vintage wash"),)
    assert docs[1].parts == (TextPart("text: Only text"),)


def test_cohere_document_fields_must_be_strings_and_named_when_not():
    request = RerankRequest.model_validate({"query": "q", "documents": [{"text": "a", "price": 5}]})
    with pytest.raises(InvalidInput) as info:
        rerank_inputs(request.query, request.documents)
    assert [v.field for v in info.value.violations] == ["documents[0].price"]


def test_an_empty_object_is_refused_naming_it():
    request = RerankRequest.model_validate({"query": "q", "documents": [{}]})
    with pytest.raises(InvalidInput) as info:
        rerank_inputs(request.query, request.documents)
    assert [v.field for v in info.value.violations] == ["documents[0]"]


def test_pydantic_locations_read_as_json_paths():
    assert field_path(("body", "documents", 3, "<object>", "image")) == "documents[3].image"
    assert field_path(("body",)) == "body"
    assert field_path(("body", "query")) == "query"


def test_service_part_paths_are_renamed_to_the_json_fields():
    request = RerankRequest.model_validate({"query": "q", "documents": ["a", {"text": "b", "image": B64}]})
    inputs = rerank_inputs(request.query, request.documents)
    exc = TooLarge([FieldViolation("documents[1].parts[0].image", "corrupt"),
                    FieldViolation("documents[1].parts[1].text", "too long"),
                    FieldViolation("query.parts[0].text", "empty"),
                    FieldViolation("instruction", "too long")])
    renamed = inputs.named_fields(exc)
    assert isinstance(renamed, TooLarge)
    assert [v.field for v in renamed.violations] == ["documents[1].image", "documents[1].text", "query",
                                                     "instruction"]

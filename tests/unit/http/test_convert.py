"""Images from base64 and data: URLs, JSON objects into ordered parts, and field names back."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from lychee_grpc.http.app import field_path
from lychee_grpc.http.convert import decode_image, documents_from, named_fields, parts
from lychee_grpc.http.schemas import Content, DocumentIn, RerankRequest
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
    content = Content(text="denim", image=B64)
    assert parts(content, "query", []) == (ImagePart(PNG), TextPart("denim"))


def test_strings_are_text_documents_and_ids_default_to_the_index():
    request = RerankRequest(query="q", documents=["a", {"id": "sku-9", "text": "b"}])
    docs = documents_from(request.documents, [])
    assert [(d.id, d.parts) for d in docs] == [("0", (TextPart("a"),)), ("sku-9", (TextPart("b"),))]


def test_an_empty_object_is_refused():
    with pytest.raises(ValidationError):
        DocumentIn.model_validate({})


def test_pydantic_locations_read_as_json_paths():
    assert field_path(("body", "documents", 3, "image")) == "documents[3].image"
    assert field_path(("body",)) == "body"
    assert field_path(("body", "query")) == "query"


def test_service_part_paths_are_renamed_to_the_json_fields():
    query = Content(text="q")
    documents = [Content(text="a"), Content(text="b", image=B64)]
    exc = TooLarge([FieldViolation("documents[1].parts[0].image", "corrupt"),
                    FieldViolation("documents[1].parts[1].text", "too long"),
                    FieldViolation("query.parts[0].text", "empty"),
                    FieldViolation("instruction", "too long")])
    renamed = named_fields(exc, query, documents)
    assert isinstance(renamed, TooLarge)
    assert [v.field for v in renamed.violations] == ["documents[1].image", "documents[1].text", "query.text",
                                                     "instruction"]

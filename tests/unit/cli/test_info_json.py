"""`lychee-grpc info` prints 64-bit counts as JSON numbers (protobuf's JSON writes them as strings)."""

from __future__ import annotations

import json

from google.protobuf import json_format

from lychee_grpc.cli.call import _with_numbers
from lychee_grpc.proto import lychee_pb2 as pb


def test_64_bit_fields_nested_and_top_level_are_numbers():
    info = pb.GetModelInfoResponse(parameters=8_290_000_000, image_cache_bytes=3,
                                   limits=pb.Limits(max_image_bytes=20 << 20, max_queue_tokens=2_000_000))
    raw = json_format.MessageToDict(info)
    assert raw["parameters"] == "8290000000"  # what protobuf gives, and what users tripped on
    out = json.loads(json.dumps(_with_numbers(info, raw)))
    assert out["parameters"] == 8_290_000_000 and out["imageCacheBytes"] == 3
    assert out["limits"] == {"maxImageBytes": 20 << 20, "maxQueueTokens": 2_000_000}

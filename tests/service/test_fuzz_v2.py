"""Generated KServe v2 bodies against the live server: whatever the body, never a 5xx.

The OpenAPI fuzzer (test_fuzz_openapi.py) cannot reach v2 infer bodies (the route reads raw
bytes, so its schema has no body); this property test builds bodies around the v2 shape, from
valid-looking to nonsense, with NaN, huge numbers, wrong types and binary tails.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import Server

pytestmark = pytest.mark.slow
URL = "/v2/models/yolov3-tiny-coco/infer"

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
anything = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
parameters = (
    st.fixed_dictionaries(
        {},
        optional={
            "binary_data_size": st.integers(-4, 4096) | anything,
            "binary_data": st.booleans() | anything,
            "binary_data_output": st.booleans() | anything,
            "precision": st.sampled_from(["fp32", "int8", "auto", "fp4"]) | anything,
        },
    )
    | anything
)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["images", "output0", ""]) | anything,
        "datatype": st.sampled_from(["FP32", "FP16", "INT8", "UINT8", "BOOL", "BF16"]) | anything,
        "shape": st.lists(st.integers(-2, 6), max_size=5) | st.just([1, 3, 416, 416]) | anything,
        "data": st.lists(st.floats() | st.integers(-300, 300) | st.booleans(), max_size=40)
        | anything,
        "parameters": parameters,
    },
)
body = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.text(max_size=8) | anything,
            "inputs": st.lists(tensor, max_size=3) | anything,
            "outputs": st.lists(
                st.fixed_dictionaries({}, optional={"name": anything, "parameters": parameters}),
                max_size=2,
            )
            | anything,
            "parameters": parameters,
        },
    )
    | anything
)


def test_v2_bodies_never_get_a_server_error(server: Server) -> None:
    """300 generated bodies (fixed seed), each answered below 500; the count of bodies really
    sent is checked in this same test, so it holds whichever tests run before or after it."""
    sent: list[int] = []

    @seed(20261127)
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        header=body, tail=st.binary(max_size=64), header_length=st.sampled_from([None, 0, 1, -1])
    )
    def post_one(header: Any, tail: bytes, header_length: int | None) -> None:
        text = json.dumps(header).encode()  # NaN and Infinity included, as a hostile client sends
        headers: dict[str, str] = {}
        if header_length is not None:
            # 0: the exact JSON length, binary tail after it; 1/-1: a length that is off by one.
            headers["Inference-Header-Content-Length"] = str(len(text) + header_length)
            text += tail
        with httpx.Client(base_url=server.url, timeout=60) as client:
            r = client.post(URL, content=text, headers=headers)
        sent.append(1)
        assert r.status_code < 500, (r.status_code, r.text[:300], text[:300])
        if r.status_code >= 400:
            assert isinstance(r.json()["error"], str)

    post_one()
    assert len(sent) >= 300, len(sent)

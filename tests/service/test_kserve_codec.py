"""The KServe v2 tensor codec on its own: body splitting, JSON and binary inputs, outputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from service.api.kserve_codec import (
    check_requested_outputs,
    decode_inputs,
    encode_outputs,
    parse_request,
    requested_precision,
    wants_binary,
)
from service.errors import BadRequest, InferenceFailed

X = {"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}


def req(body: dict[str, Any]) -> Any:
    """A request as the server parses it (schema-validated), from a plain dict."""
    request, _ = parse_request(json.dumps({"inputs": [X], **body}).encode(), None)
    return request


def split(body: bytes, length: str | None) -> tuple[dict[str, Any], bytes]:
    request, binary = parse_request(body, length)
    return request.model_dump(exclude_none=True), binary


def decode(body: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
    return decode_inputs(req(body), binary, max_elements=1 << 20)


def test_split_body_with_and_without_a_binary_tail() -> None:
    head = json.dumps({"inputs": [X]}).encode()
    assert split(head, None) == ({"inputs": [X]}, b"")
    assert split(head + b"\x01\x02", str(len(head))) == ({"inputs": [X]}, b"\x01\x02")
    assert split(head, str(len(head))) == ({"inputs": [X]}, b"")  # all header, no tail


@pytest.mark.parametrize(
    ("body", "length", "blamed"),
    [
        (b"{}", "0", "length"),  # an empty header is no header
        (b"{}", "3", "length"),
        (b"{}", "-1", "length"),
        (b"{}", "two", "length"),
        (b"not json", None, "json"),
        (b"[", "1", "json"),  # a 1-byte header is within the body: it is the JSON that is bad
    ],
)
def test_split_body_refuses_a_bad_header_length_or_header(
    body: bytes, length: str | None, blamed: str
) -> None:
    """The message blames what is wrong: the length header, or the JSON it delimits."""
    with pytest.raises(BadRequest, match="v2 inference request") as refused:
        split(body, length)
    about_length = "Inference-Header-Content-Length" in refused.value.message
    assert about_length == (blamed == "length"), refused.value.message


def test_json_and_binary_inputs_decode_in_order() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([[7, -8]], dtype="<i8")
    request = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": a.ravel().tolist()},
            {
                "name": "a",
                "datatype": "FP32",
                "shape": [2, 3],
                "parameters": {"binary_data_size": a.nbytes},
            },
            {
                "name": "b",
                "datatype": "INT64",
                "shape": [1, 2],
                "parameters": {"binary_data_size": b.nbytes},
            },
        ]
    }
    arrays = decode(request, a.tobytes() + b.tobytes())
    np.testing.assert_array_equal(arrays["x"], a)
    np.testing.assert_array_equal(arrays["a"], a)  # the first slice ...
    np.testing.assert_array_equal(arrays["b"], b)  # ... and the next one after it
    assert arrays["a"].dtype == np.float32 and arrays["b"].dtype == np.int64


JSON_ONLY = b""  # no binary tail: a leftover tail would be a fault of its own


@pytest.mark.parametrize(
    ("request_", "binary"),
    [
        ({"inputs": []}, JSON_ONLY),
        ({"inputs": "x"}, JSON_ONLY),
        ({"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}, JSON_ONLY),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}, JSON_ONLY),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, JSON_ONLY),
        (  # 16 bytes declared, 8 sent
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [4],
                        "parameters": {"binary_data_size": 16},
                    }
                ]
            },
            b"\0" * 8,
        ),
        ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1], "data": [1]}]}, JSON_ONLY),
        # The right number of values, but not numbers (each check stands on its own).
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["1", "2"]}]},
            JSON_ONLY,
        ),
        # Numbers, but nested data with fewer values than the shape holds.
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3]]}]},
            JSON_ONLY,
        ),
    ],
)
def test_bad_inputs_are_bad_requests(request_: dict[str, Any], binary: bytes) -> None:
    """Each request has exactly one fault (an earlier version sent every one a stray binary
    tail, so each was refused for that and the fault under test was never reached)."""
    with pytest.raises(BadRequest):
        decode(request_, binary)


def test_a_request_without_inputs_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="inputs"):
        parse_request(b"{}", None)


def test_a_valid_json_request_with_no_binary_tail_is_accepted() -> None:
    """The control for the cases above: the same shape of request without its fault."""
    good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    assert decode(good, JSON_ONLY)["x"].tolist() == [1.0, 2.0]


def test_requested_precision_and_outputs() -> None:
    assert requested_precision(req({})) == "auto"
    assert requested_precision(req({"parameters": {"precision": "int8"}})) == "int8"
    with pytest.raises(BadRequest, match="parameters"):
        requested_precision(req({"parameters": [1]}))
    check_requested_outputs(req({"outputs": [{"name": "out"}]}), ["out"])
    check_requested_outputs(req({}), ["out"])
    for bad in ({"outputs": {"a": 1}}, {"outputs": [1]}, {"outputs": [{"name": 3}]}):
        with pytest.raises(BadRequest, match="output"):
            check_requested_outputs(req(bad), ["out"])
    with pytest.raises(BadRequest, match="unknown output 'nope'"):
        check_requested_outputs(req({"outputs": [{"name": "nope"}]}), ["out"])
    with pytest.raises(BadRequest, match="parameters"):
        check_requested_outputs(req({"outputs": [{"name": "out", "parameters": 1}]}), ["out"])


def test_wants_binary_per_output_or_for_the_whole_request() -> None:
    assert not wants_binary(req({}), "a")
    assert wants_binary(req({"parameters": {"binary_data_output": True}}), "a")
    per_output = {"outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]}
    assert wants_binary(req(per_output), "a") and not wants_binary(req(per_output), "b")
    assert not wants_binary(
        req({"outputs": [{"name": "a", "parameters": {"binary_data": False}}]}), "a"
    )


OUTPUTS = {"a": np.arange(4, dtype=np.float32).reshape(1, 4), "b": np.array([[5]], np.int64)}


def test_json_outputs() -> None:
    body, headers = encode_outputs(req({"id": "r1"}), OUTPUTS, "m.fp32", {"parameters": {"p": 1}})
    assert headers == {"content-type": "application/json"}
    reply = json.loads(body)
    assert (
        reply["model_name"] == "m.fp32" and reply["id"] == "r1" and reply["parameters"] == {"p": 1}
    )
    assert reply["outputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 2.0, 3.0]},
        {"name": "b", "datatype": "INT64", "shape": [1, 1], "data": [5]},
    ]


def test_non_finite_output_values_are_json_null() -> None:
    outputs = {"a": np.array([[1.5, np.nan, np.inf, -np.inf]], np.float32)}
    body, _ = encode_outputs(req({}), outputs, "m.fp32", {})
    reply = json.loads(body, parse_constant=lambda c: pytest.fail(f"bare {c} in the reply"))
    assert reply["outputs"][0]["data"] == [1.5, None, None, None]


def test_the_reply_header_is_never_invalid_json() -> None:
    """Outputs carry NaN as null (tested with the server); anything else non-finite that
    reached the header is an error, never a bare ``NaN`` token a strict client cannot parse."""
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_outputs(req({}), OUTPUTS, "m.fp32", {"parameters": {"p": float("nan")}})


def test_binary_outputs_follow_the_header_and_only_requested_ones_are_sent() -> None:
    request = {"outputs": [{"name": "a", "parameters": {"binary_data": True}}]}
    body, headers = encode_outputs(req(request), OUTPUTS, "m", {})
    assert headers["content-type"] == "application/octet-stream"
    n = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:n])
    assert "id" not in header
    (entry,) = header["outputs"]  # b was not requested
    assert entry["parameters"] == {"binary_data_size": 16} and "data" not in entry
    assert body[n:] == OUTPUTS["a"].astype("<f4").tobytes()


def test_big_endian_outputs_are_sent_little_endian() -> None:
    big = {"a": np.arange(3, dtype=">f4").reshape(1, 3)}
    body, headers = encode_outputs(req({"parameters": {"binary_data_output": True}}), big, "m", {})
    n = int(headers["Inference-Header-Content-Length"])
    assert json.loads(body[:n])["outputs"][0]["datatype"] == "FP32"
    assert body[n:] == np.arange(3, dtype="<f4").tobytes()


def test_an_output_dtype_v2_cannot_carry_is_a_server_error() -> None:
    with pytest.raises(InferenceFailed, match="not a v2 type"):
        encode_outputs(req({}), {"a": np.zeros((1, 2), np.complex64)}, "m", {})


@pytest.mark.parametrize(
    ("field", "at_limit", "over"),
    [
        ("name", {"name": "n" * 256}, {"name": "n" * 257}),
        ("shape", {"shape": [1] * 8, "data": [0.0]}, {"shape": [1] * 9, "data": [0.0]}),
    ],
)
def test_input_limits_hold_exactly_at_their_bound(
    field: str, at_limit: dict[str, Any], over: dict[str, Any]
) -> None:
    def body(changes: dict[str, Any]) -> bytes:
        return json.dumps({"inputs": [{**X, **changes}]}).encode()

    request, _ = parse_request(body(at_limit), None)  # 256 characters, 8 dimensions: accepted
    assert request.inputs[0].name
    with pytest.raises(BadRequest):
        parse_request(body(over), None)


def test_a_zero_size_binary_input_takes_no_bytes_and_a_negative_size_is_refused() -> None:
    """``binary_data_size`` 0 is a valid empty tensor (a 0-length dimension), and the next
    input's slice starts where it would have; a negative size is a client error."""
    empty = {
        "name": "e",
        "datatype": "FP32",
        "shape": [0, 3],
        "parameters": {"binary_data_size": 0},
    }
    after = {"name": "n", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}
    arrays = decode({"inputs": [empty, after]}, np.array([5], "<i8").tobytes())
    assert arrays["e"].shape == (0, 3) and arrays["e"].dtype == np.float32
    np.testing.assert_array_equal(arrays["n"], [5])
    negative = {**empty, "parameters": {"binary_data_size": -1}}
    with pytest.raises(BadRequest, match="non-negative"):
        decode({"inputs": [negative]}, b"")


def test_json_data_that_overflows_to_infinity_is_refused() -> None:
    """``1e999`` is valid JSON that parses as an infinite float: a client error, never a tensor
    of infinities sent to the engine."""
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 1e999]}]}'
    request, binary = parse_request(body, None)
    with pytest.raises(BadRequest, match="finite"):
        decode_inputs(request, binary, max_elements=16)
    whole = b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}'
    request, binary = parse_request(whole, None)
    np.testing.assert_array_equal(decode_inputs(request, binary, max_elements=16)["x"], [1, 2])


def test_parameters_take_booleans_numbers_and_strings_and_nothing_else() -> None:
    given = {"flag": True, "count": 3, "ratio": 0.5, "name": "x"}
    assert req({"parameters": given}).parameters == given
    for bad in (float("nan"), [1], {"a": 1}, None):
        with pytest.raises(BadRequest):
            req({"parameters": {"p": bad}})


def test_flat_data_of_the_wrong_length_is_refused_before_it_is_converted() -> None:
    """Counted first (a cheap len), so a long list is never turned into an array to be refused."""
    with pytest.raises(BadRequest, match=r"3 values for shape \[4\]"):
        decode(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3]}]}, b""
        )


def test_the_element_limit_admits_exactly_its_bound() -> None:
    def tensor(n: int) -> dict[str, Any]:
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [n], "data": [0.0] * n}]}

    assert decode_inputs(req(tensor(16)), b"", max_elements=16)["x"].shape == (16,)
    with pytest.raises(BadRequest, match="over 16 values"):
        decode_inputs(req(tensor(17)), b"", max_elements=16)


def test_parameter_names_are_at_most_256_characters() -> None:
    assert req({"parameters": {"k" * 256: 1}}).parameters == {"k" * 256: 1}
    with pytest.raises(BadRequest):
        req({"parameters": {"k" * 257: 1}})

"""``http.request`` against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from connectors.http import Request
from taskplatform.errors import PermanentError, TransientError

# --- output shape ------------------------------------------------------------------------------


def test_json_200_output_shape(http, call, http_server):
    out = call(http, url=http_server.url("/json"))
    assert set(out) == {"status", "headers", "json", "text"}
    assert out["status"] == 200
    assert out["json"] == {"hello": "world", "n": 1, "items": [1, 2, 3]}
    assert out["headers"]["content-type"] == "application/json"
    assert out["text"] == '{"hello": "world", "n": 1, "items": [1, 2, 3]}'


def test_text_200_has_null_json(http, call, http_server):
    out = call(http, url=http_server.url("/text"))
    assert out["status"] == 200
    assert out["json"] is None
    assert out["text"] == "just some text, not JSON {"
    assert out["headers"]["content-type"].startswith("text/plain")


def test_204_empty_body(http, call, http_server):
    out = call(http, method="DELETE", url=http_server.url("/empty"))
    assert out == {"status": 204, "headers": out["headers"], "json": None, "text": ""}


def test_head_has_no_body(http, call, http_server):
    out = call(http, method="HEAD", url=http_server.url("/json"))
    assert out["status"] == 200
    assert out["json"] is None
    assert out["text"] == ""
    assert out["headers"]["content-type"] == "application/json"


def test_output_is_plain_json_types(http, call, http_server):
    out = call(http, url=http_server.url("/json"))
    assert json.loads(json.dumps(out)) == out  # JSON-serialisable as returned


# --- what is sent ------------------------------------------------------------------------------


def test_json_body_headers_and_query_are_sent(http, call, http_server):
    out = call(
        http,
        method="POST",
        url=http_server.url("/echo"),
        json={"name": "ada", "tags": ["x", "y"], "n": 3},
        headers={"X-Trace": "abc123"},
        query={"page": 2, "q": "hello world", "flag": True},
    )
    assert out["status"] == 201
    echo = out["json"]
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo"
    assert echo["query"] == {"page": ["2"], "q": ["hello world"], "flag": ["true"]}
    assert echo["headers"]["x-trace"] == "abc123"
    assert echo["headers"]["content-type"] == "application/json"
    assert json.loads(echo["body"]) == {"name": "ada", "tags": ["x", "y"], "n": 3}


def test_raw_body_is_sent_as_is(http, call, http_server):
    out = call(http, method="PUT", url=http_server.url("/echo"), body="raw text ✓",
               headers={"Content-Type": "text/plain; charset=utf-8"})
    echo = out["json"]
    assert echo["method"] == "PUT"
    assert echo["body"] == "raw text ✓"
    assert echo["headers"]["content-type"] == "text/plain; charset=utf-8"


def test_query_list_values_repeat_the_key(http, call, http_server):
    out = call(http, url=http_server.url("/echo"), query={"id": [1, 2]})
    assert out["json"]["query"] == {"id": ["1", "2"]}


def test_url_query_string_is_kept(http, call, http_server):
    out = call(http, url=http_server.url("/echo?a=1&b=x%20y"))
    assert out["json"]["query"] == {"a": ["1"], "b": ["x y"]}


def test_query_is_merged_with_the_url_query(http, call, http_server):
    out = call(http, url=http_server.url("/echo?a=1"), query={"b": "2"})
    assert out["json"]["query"] == {"a": ["1"], "b": ["2"]}


@pytest.mark.parametrize("method", ["post", "Post", "pOST"])
def test_method_is_case_insensitive(http, call, http_server, method):
    assert http.parse_inputs({"url": "http://h/", "method": method}).method == "POST"
    out = call(http, method=method, url=http_server.url("/echo"), json={"k": 1})
    assert out["json"]["method"] == "POST"


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "OPTIONS"])
def test_other_methods(http, call, http_server, method):
    assert call(http, method=method, url=http_server.url("/echo"))["json"]["method"] == method


def test_url_credentials_are_sent_as_basic_auth(http, call, http_server):
    url = f"http://user:secret@127.0.0.1:{http_server.port}/echo"
    out = call(http, url=url)
    expected = "Basic " + base64.b64encode(b"user:secret").decode()
    assert out["json"]["headers"]["authorization"] == expected


def test_client_is_reused_and_recreated_after_close(http, call, http_server):
    call(http, url=http_server.url("/json"))
    first = http._client()
    assert http._client() is first
    http.close()
    assert call(http, url=http_server.url("/json"))["status"] == 200
    assert http._client() is not first


# --- redirects ---------------------------------------------------------------------------------


def test_redirect_not_followed_by_default(http, call, http_server):
    out = call(http, url=http_server.url("/redirect"))
    assert out["status"] == 302
    assert out["headers"]["location"] == "/json"
    assert out["json"] is None


def test_redirect_followed_when_asked(http, call, http_server):
    out = call(http, url=http_server.url("/redirect"), follow_redirects=True)
    assert out["status"] == 200
    assert out["json"]["hello"] == "world"


def test_redirect_loop_is_permanent(http, call, http_server):
    with pytest.raises(PermanentError, match="TooManyRedirects"):
        call(http, url=http_server.url("/loop"), follow_redirects=True)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 425, 429])
def test_transient_statuses(http, call, http_server, status):
    with pytest.raises(TransientError) as info:
        call(http, url=http_server.url(f"/status/{status}"))
    assert not isinstance(info.value, PermanentError)
    assert f"HTTP {status}" in str(info.value)
    assert f"failure {status}" in str(info.value)  # a snippet of the body
    assert f"GET {http_server.url(f'/status/{status}')}" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 422])
def test_permanent_statuses(http, call, http_server, status):
    with pytest.raises(PermanentError) as info:
        call(http, method="POST", url=http_server.url(f"/status/{status}"), json={})
    assert not isinstance(info.value, TransientError)
    assert f"POST {http_server.url(f'/status/{status}')}: HTTP {status}" in str(info.value)


def test_timeout_is_transient(http, call, http_server):
    with pytest.raises(TransientError, match=r"timed out after 0\.2s"):
        call(http, url=http_server.url("/slow"), timeout_s=0.2)


def test_connection_refused_is_transient(http, call, refused_url):
    with pytest.raises(TransientError, match="ConnectError"):
        call(http, url=refused_url, timeout_s=2)


def test_undecodable_body_is_permanent(http, call, http_server):
    with pytest.raises(PermanentError, match="DecodingError"):
        call(http, url=http_server.url("/badgzip"))


# --- no credentials or query strings in error messages -------------------------------------------


def _assert_clean(message: str) -> None:
    assert "secret" not in message
    assert "user:" not in message
    assert "hunter2" not in message
    assert "token" not in message
    assert "?" not in message


@pytest.mark.parametrize("path", ["/status/500", "/status/503", "/status/429", "/status/404",
                                  "/status/400", "/status/409"])
def test_error_messages_hide_credentials_and_query(http, call, http_server, path):
    url = f"http://user:secret@127.0.0.1:{http_server.port}{path}?token=hunter2#frag-secret"
    with pytest.raises((TransientError, PermanentError)) as info:
        call(http, url=url)
    message = str(info.value)
    _assert_clean(message)
    assert f"GET http://127.0.0.1:{http_server.port}{path}" in message


def test_timeout_message_hides_credentials_and_query(http, call, http_server):
    url = f"http://user:secret@127.0.0.1:{http_server.port}/slow?token=hunter2"
    with pytest.raises(TransientError) as info:
        call(http, url=url, timeout_s=0.2)
    _assert_clean(str(info.value))
    assert "/slow" in str(info.value)


def test_refused_message_hides_credentials_and_query(http, call, refused_url):
    url = refused_url.replace("http://", "http://user:secret@") + "?token=hunter2"
    with pytest.raises(TransientError) as info:
        call(http, url=url, timeout_s=2)
    _assert_clean(str(info.value))


def test_exception_chain_is_kept(http, call, refused_url):
    with pytest.raises(TransientError) as info:
        call(http, url=refused_url, timeout_s=2)
    assert info.value.__cause__ is not None


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"url": "ftp://example.com/file"}, id="ftp-url"),
        pytest.param({"url": "file:///etc/passwd"}, id="file-url"),
        pytest.param({"url": "example.com/x"}, id="no-scheme"),
        pytest.param({"url": "http://"}, id="no-host"),
        pytest.param({"url": "http:///path"}, id="empty-host"),
        pytest.param({"url": "http://[::1"}, id="unparsable"),
        pytest.param({"url": "http://h/", "json": {"a": 1}, "body": "x"}, id="json-and-body"),
        pytest.param({"url": "http://h/", "jsn": {"a": 1}}, id="unknown-key"),
        pytest.param({"url": "http://h/", "method": "FETCH"}, id="unknown-method"),
        pytest.param({"url": "http://h/", "timeout_s": 0}, id="zero-timeout"),
        pytest.param({"url": "http://h/", "headers": {"X": 1}}, id="non-string-header"),
        pytest.param({}, id="no-url"),
    ],
)
def test_invalid_inputs_fail_validation(raw):
    with pytest.raises(ValidationError):
        Request().parse_inputs(raw)


def test_validation_message_names_the_problem():
    with pytest.raises(ValidationError, match="either json or body"):
        Request().parse_inputs({"url": "http://h/", "json": [], "body": ""})
    with pytest.raises(ValidationError, match="http:// or https://"):
        Request().parse_inputs({"url": "ftp://h/"})
    with pytest.raises(ValidationError, match="extra"):
        Request().parse_inputs({"url": "http://h/", "nope": 1})


def test_validation_error_messages_hide_credentials():
    with pytest.raises(ValidationError) as info:
        Request().parse_inputs({"url": "ftp://user:secret@example.com/f"})
    for error in info.value.errors(include_url=False):
        assert "secret" not in error["msg"]


def test_defaults():
    inputs = Request().parse_inputs({"url": "https://example.com"})
    assert inputs.method == "GET"
    assert inputs.headers == {} and inputs.query == {}
    assert inputs.json_ is None and inputs.body is None
    assert inputs.timeout_s == 30.0
    assert inputs.follow_redirects is False


def test_metadata():
    connector = Request()
    assert connector.name == "http.request"
    assert connector.execution_mode == "sync"
    assert connector.default_queue() == "io"

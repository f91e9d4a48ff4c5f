"""``http.request``: one HTTP call with httpx.

5xx, 408, 429, timeouts and connection errors are transient (retried); other 4xx are
permanent. The output is ``{status, headers, json, text}``; ``json`` is null when the body is
not JSON.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator

from connectors.base import Connector, With
from taskplatform.errors import PermanentError, TransientError

TRANSIENT_STATUS = frozenset({408, 425, 429})
MAX_TEXT_CHARS = 1_000_000


class RequestWith(With):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    json_: Any = Field(None, alias="json")
    body: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    follow_redirects: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {_safe_url(value)[:60]!r}")
        try:
            host = httpx.URL(value).host
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid url {_safe_url(value)!r}: {exc}") from None
        if not host:
            raise ValueError(f"url has no host: {_safe_url(value)!r}")
        return value

    def model_post_init(self, __context: Any) -> None:
        if self.json_ is not None and self.body is not None:
            raise ValueError("give either json or body, not both")


class Request(Connector):
    """Make an HTTP request and return its status, headers and body."""

    name = "http.request"
    With = RequestWith

    def __init__(self) -> None:
        self._local = threading.local()

    def _client(self) -> httpx.Client:
        # One pooled client per thread and process: clients must not cross a fork.
        client = getattr(self._local, "client", None)
        if client is None or getattr(self._local, "pid", None) != os.getpid():
            client = httpx.Client()
            self._local.client, self._local.pid = client, os.getpid()
        return client

    def close(self) -> None:
        """Close this thread's pooled client (a new one is made on the next request)."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def execute_action(self, inputs: RequestWith) -> dict[str, Any]:
        where = f"{inputs.method} {_safe_url(inputs.url)}"
        try:
            url = httpx.URL(inputs.url)
            if inputs.query:  # merged into the URL's own query (httpx's params= would replace it)
                url = url.copy_merge_params({k: _query_value(v) for k, v in inputs.query.items()})
            response = self._client().request(
                inputs.method,
                url,
                headers=inputs.headers,
                json=inputs.json_,
                content=inputs.body,
                timeout=inputs.timeout_s,
                follow_redirects=inputs.follow_redirects,
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"{where}: timed out after {inputs.timeout_s:g}s") from exc
        except httpx.UnsupportedProtocol as exc:  # a TransportError, but retrying cannot help
            raise PermanentError(f"{where}: {type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc
        except (httpx.RequestError, httpx.InvalidURL) as exc:  # too many redirects, bad encoding
            raise PermanentError(f"{where}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status >= 500 or status in TRANSIENT_STATUS:
            raise TransientError(f"{where}: HTTP {status} {_snippet(response)}", http_status=status)
        if status >= 400:
            raise PermanentError(f"{where}: HTTP {status} {_snippet(response)}", http_status=status)
        try:
            body_json = response.json() if response.content else None
        except ValueError:
            body_json = None
        return {
            "status": status,
            "headers": dict(response.headers),
            "json": body_json,
            "text": response.text[:MAX_TEXT_CHARS],
        }


def _query_value(value: Any) -> Any:
    return str(value).lower() if isinstance(value, bool) else value


def _safe_url(url: str) -> str:
    """The URL without credentials, query string or fragment, for error messages."""
    try:
        return str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        scheme, sep, rest = url.partition("://")
        host = rest.split("/", 1)[0].rpartition("@")[2].split("?", 1)[0].split("#", 1)[0]
        return f"{scheme}{sep}{host}/<invalid url>" if sep else "<invalid url>"


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return f"({text[:limit]}{'…' if len(text) > limit else ''})" if text else ""

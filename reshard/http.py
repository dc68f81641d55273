"""The one HTTP client reshard uses: Kafka Connect's REST API, the schema registry,
Prometheus and Maven Central, through ``requests``, with the timeout, basic auth and TLS
(a CA file, a client certificate) set in one place, and failures turned into reshard's
errors: ``Unavailable`` when the server cannot be reached, ``HttpError`` when it answers
with an error status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from reshard.errors import ReshardError, Unavailable


class HttpError(ReshardError):
    """The server answered with an error status (``status``; its body in ``detail``)."""

    def __init__(self, what: str, method: str, path: str, status: int, detail: str):
        super().__init__(f"{what} {method} {path} failed ({status}): {detail[:500]}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Endpoint:
    """Where a service answers, and how reshard authenticates to it."""

    url: str
    what: str  # names the service in errors: "Kafka Connect at http://…"
    auth: tuple[str, str] | None = None
    ca_file: str | None = None  # verify an https:// server against this CA (else requests' CA bundle)
    cert_file: str | None = None  # a client certificate, when the server asks for one
    key_file: str | None = None
    timeout: float = 15.0


class HttpClient:
    def __init__(self, endpoint: Endpoint, headers: dict[str, str] | None = None):
        self.endpoint = endpoint
        self.url = endpoint.url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update(headers or {})
        if endpoint.auth:
            self.session.auth = endpoint.auth
        # given with every request: a CA file set on the session alone was seen ignored (requests
        # 2.34 verified a session's https calls against its own bundle)
        self.verify: bool | str = endpoint.ca_file or True
        self.cert: str | tuple[str, str] | None = (
            (endpoint.cert_file, endpoint.key_file) if endpoint.cert_file and endpoint.key_file else endpoint.cert_file)

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
                stream: bool = False, timeout: float | None = None) -> requests.Response:
        """The response, whatever its status; Unavailable when there is none."""
        try:
            return self.session.request(method, self.url + path, json=json, params=params, stream=stream,
                                        timeout=timeout or self.endpoint.timeout, verify=self.verify, cert=self.cert)
        except requests.RequestException as exc:
            raise Unavailable(f"{self.endpoint.what} at {self.url} is unreachable: {exc}") from None

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
             missing_ok: bool = False) -> Any:
        """The response's JSON document (None for an empty body, or a 404 with ``missing_ok``);
        HttpError for any other error status."""
        resp = self.request(method, path, json=json, params=params)
        if resp.status_code == 404 and missing_ok:
            return None
        if resp.status_code >= 400:
            raise HttpError(self.endpoint.what, method, path, resp.status_code, resp.text)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise Unavailable(f"{self.endpoint.what} at {self.url} answered {method} {path} with no JSON: "
                              f"{resp.text[:200]!r}") from None

    def close(self) -> None:
        self.session.close()

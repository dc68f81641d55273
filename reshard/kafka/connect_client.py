"""Kafka Connect REST client: register, inspect and remove reshard's connectors."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from reshard.config import ConnectConfig
from reshard.errors import ReshardError, Unavailable, WaitTimeout

REBALANCE_WAIT_S = 30.0  # how long a call waits out a worker-group rebalance (HTTP 409, or a 500 saying so)


class ConnectError(ReshardError):
    """Kafka Connect refused a request or reports a connector as FAILED."""


def tls_context(connect: ConnectConfig) -> ssl.SSLContext | None:
    """Verification against ``ca_file`` (else the system's CAs) and the client certificate,
    for an https:// REST API; None for http://."""
    if not connect.url.startswith("https://"):
        return None
    ctx = ssl.create_default_context(cafile=connect.ca_file)
    if connect.cert_file:
        ctx.load_cert_chain(connect.cert_file, connect.key_file)
    return ctx


class ConnectClient:
    def __init__(self, connect: ConnectConfig, timeout: float = 15.0):
        self.url = connect.url.rstrip("/")
        self.timeout = timeout
        self._tls = tls_context(connect)
        auth = connect.basic_auth()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call. 409 (the worker group is rebalancing, e.g. right after a connector
        was created, changed or resumed) is transient: retried for up to REBALANCE_WAIT_S, and
        so is a 500 whose message says a rebalance is expected (seen right after a switch's
        connectors came and went)."""
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + REBALANCE_WAIT_S
        while True:
            req = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as resp:
                    raw = resp.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                detail = exc.read().decode(errors="replace")
                if exc.code in (401, 403):
                    raise ConnectError(f"Kafka Connect at {self.url} refused reshard's credentials ({exc.code}): "
                                       "check connect.username and connect.password") from None
                rebalancing = exc.code == 409 or (exc.code == 500 and "rebalance" in detail.lower())
                if rebalancing and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise ConnectError(f"Kafka Connect {method} {path} failed ({exc.code}): {detail}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise Unavailable(f"Kafka Connect at {self.url} is unreachable: {exc}") from None

    def check(self) -> None:
        self._call("GET", "/")

    def plugins(self) -> list[str]:
        return [p["class"] for p in self._call("GET", "/connector-plugins") or []]

    def has_plugin(self, cls: str) -> bool:
        """Whether the worker can load ``cls`` (a connector, transform, predicate or converter)."""
        return any(p["class"] == cls for p in self._call("GET", "/connector-plugins?connectorsOnly=false") or [])

    def connectors(self) -> list[str]:
        return self._call("GET", "/connectors") or []

    def put(self, name: str, config: dict[str, str]) -> None:
        """Create the connector, or update it to exactly this config (idempotent).

        A new connector starts from a clean slate: it is created STOPPED, any offsets a
        deleted namesake left in Connect's offsets topic are removed, then it is resumed."""
        if self.status(name) is None:
            self._call("POST", "/connectors", {"name": name, "config": config, "initial_state": "STOPPED"})
            self._call("DELETE", f"/connectors/{name}/offsets")
            self.resume(name)
        else:
            self._call("PUT", f"/connectors/{name}/config", config)

    def stop(self, name: str, timeout: float = 30.0, forget_offsets: bool = False) -> None:
        """Stop the connector's tasks (state STOPPED: its config stays, its slot is released);
        with ``forget_offsets`` also delete its stored source offsets, so that on ``resume``
        Debezium starts from its slot's confirmed position."""
        self._call("PUT", f"/connectors/{name}/stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(name) or {}
            if st.get("connector", {}).get("state") == "STOPPED" and not st.get("tasks"):
                break
            time.sleep(0.2)
        else:
            raise WaitTimeout(f"connector {name} did not stop within {timeout:.0f}s")
        if forget_offsets:
            self._call("DELETE", f"/connectors/{name}/offsets")

    def stopped(self, name: str) -> bool:
        return ((self.status(name) or {}).get("connector") or {}).get("state") == "STOPPED"

    def pause(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/pause")

    def resume(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/resume")

    def config(self, name: str) -> dict[str, str] | None:
        return self._call("GET", f"/connectors/{name}/config")

    def status(self, name: str) -> dict | None:
        return self._call("GET", f"/connectors/{name}/status")

    def delete(self, name: str, timeout: float = 30.0) -> bool:
        """Stop the connector, delete its stored source offsets, then delete it.

        Connect keeps a deleted connector's offsets; a connector created later under the
        same name would resume from them, at a WAL position its new slot no longer has.
        So the offsets go first (KIP-875: only possible while the connector is STOPPED).
        """
        if self.status(name) is None:
            return False
        self.stop(name, timeout, forget_offsets=True)
        self._call("DELETE", f"/connectors/{name}")
        return True

    def wait_running(self, name: str, timeout: float = 60.0) -> dict:
        """Wait until the connector and all its tasks are RUNNING; fail fast on FAILED."""
        deadline = time.monotonic() + timeout
        status: dict | None = None
        while time.monotonic() < deadline:
            status = self.status(name)
            if status:
                states = [status["connector"]["state"]] + [t["state"] for t in status.get("tasks", [])]
                failed = [t for t in status.get("tasks", []) if t["state"] == "FAILED"]
                if status["connector"]["state"] == "FAILED" or failed:
                    trace = (failed[0] if failed else status["connector"]).get("trace", "")
                    raise ConnectError(f"connector {name} FAILED: {trace.splitlines()[0] if trace else 'no trace'}")
                if status.get("tasks") and all(s == "RUNNING" for s in states):
                    return status
            time.sleep(0.3)
        raise WaitTimeout(f"connector {name} not RUNNING after {timeout:.0f}s (last status: {status})")

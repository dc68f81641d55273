"""Kafka Connect REST client: register, inspect and remove reshard's connectors."""

from __future__ import annotations

from typing import Any

from reshard.config import ConnectConfig
from reshard.errors import ReshardError
from reshard.http import Endpoint, HttpClient, HttpError
from reshard.retry import poll, retry

REBALANCE_WAIT_S = 30.0  # how long a call waits out a worker-group rebalance (HTTP 409, or a 500 saying so)


class ConnectError(ReshardError):
    """Kafka Connect refused a request or reports a connector as FAILED."""


def endpoint(connect: ConnectConfig, timeout: float = 15.0) -> Endpoint:
    """Connect's REST API as reshard reaches it: basic auth, and for https:// the CA and
    client certificate of reshard.yaml's ``connect`` section."""
    return Endpoint(connect.url, "Kafka Connect", auth=connect.basic_auth(), ca_file=connect.ca_file,
                    cert_file=connect.cert_file, key_file=connect.key_file, timeout=timeout)


def _rebalancing(exc: BaseException) -> bool:
    """409 (the worker group is rebalancing, e.g. right after a connector was created,
    changed or resumed), or a 500 whose message says a rebalance is expected (seen right
    after a switch's connectors came and went)."""
    return isinstance(exc, HttpError) and (exc.status == 409 or (exc.status == 500 and "rebalance" in exc.detail.lower()))


class ConnectClient:
    def __init__(self, connect: ConnectConfig, timeout: float = 15.0):
        self.http = HttpClient(endpoint(connect, timeout), headers={"Accept": "application/json"})
        self.url = self.http.url

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call (None for a 404); a rebalance is waited out for REBALANCE_WAIT_S."""
        try:
            return retry(lambda: self.http.call(method, path, json=body, missing_ok=True), on=_rebalancing,
                         for_s=REBALANCE_WAIT_S, delay=0.5)
        except HttpError as exc:
            if exc.status in (401, 403):
                raise ConnectError(f"Kafka Connect at {self.url} refused reshard's credentials ({exc.status}): "
                                   "check connect.username and connect.password") from None
            raise ConnectError(str(exc)) from None

    def check(self) -> None:
        self._call("GET", "/")

    def plugins(self) -> list[str]:
        return list(self.plugin_versions())

    def plugin_versions(self) -> dict[str, str]:
        """Each connector plugin the worker has, with its version."""
        return {p["class"]: p.get("version", "?") for p in self._call("GET", "/connector-plugins") or []}

    def version(self) -> str:
        """The worker's Kafka Connect version."""
        return str((self._call("GET", "/") or {}).get("version", "?"))

    def loadable(self) -> set[str]:
        """Every class the worker can load as a plugin (connectors, transforms, predicates,
        converters)."""
        return {p["class"] for p in self._call("GET", "/connector-plugins?connectorsOnly=false") or []}

    def validate(self, config: dict[str, str]) -> list[str]:
        """What the worker finds wrong with ``config`` for its connector class, one line per
        error (empty: none). The worker resolves config-provider references first, and
        Debezium's PostgreSQL connector logs into the database with the result, so this tries
        the login a connector would make. A reference the worker cannot read is an error too."""
        cls = config["connector.class"]
        try:
            found = self._call("PUT", f"/connector-plugins/{cls}/config/validate", config) or {}
        except ConnectError as exc:
            return [str(exc)]
        return [f"{c['value']['name']}: {e}" for c in found.get("configs", []) for e in c["value"].get("errors", [])]

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

        def stopped() -> bool:
            st = self.status(name) or {}
            return st.get("connector", {}).get("state") == "STOPPED" and not st.get("tasks")
        poll(stopped, timeout=timeout, interval=0.2, what=f"connector {name} stopping")
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
        last: dict[str, Any] = {}

        def running() -> dict | None:
            status = last["status"] = self.status(name)
            if not status:
                return None
            states = [status["connector"]["state"]] + [t["state"] for t in status.get("tasks", [])]
            failed = [t for t in status.get("tasks", []) if t["state"] == "FAILED"]
            if status["connector"]["state"] == "FAILED" or failed:
                trace = (failed[0] if failed else status["connector"]).get("trace", "")
                raise ConnectError(f"connector {name} FAILED: {trace.splitlines()[0] if trace else 'no trace'}")
            return status if status.get("tasks") and all(s == "RUNNING" for s in states) else None
        return poll(running, timeout=timeout, interval=0.3,
                    what=lambda: f"connector {name} RUNNING (last status: {last.get('status')})")

"""A PostgreSQL cluster behind a network path a test can cut: its own network namespace,
joined to the host by a veth pair (a /30 of 10.213.0.0/16; nothing leaves the machine).

The host reaches the server at the namespace's address, so every path to it (the
coordinator's, the applier's, Connect's, the routers') crosses the veth. ``cut()`` takes
the namespace's end of the link down: packets to it are dropped without an answer, as in a
partition (new connections hang until their timeout, open ones stall), not refused.
``heal()`` brings it back; open connections carry on where TCP can still retransmit.
This kernel has no netem, so a delay is not offered.

Needs root (``ip netns``, ``setpriv``); the server runs as the ``postgres`` user inside
the namespace and is stopped by its recorded pid.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reshard.stack.postgres import PostgresCluster, data_root
from reshard.stack.process import ProcessRecord, spawn, stop
from reshard.stack.stack import free_port

HBA = "host all all 10.213.0.0/16 trust\nhost replication all 10.213.0.0/16 trust\n"
_numbers = itertools.count((os.getpid() % 50) * 4 + 1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Link:
    def __init__(self, label: str):
        n = next(_numbers) % 250 + 1
        self.ns = f"rs{os.getpid() % 100000}{label}"[:15]
        self.host_if, self.ns_if = f"rsh{os.getpid() % 10000}{n}"[:15], f"rsn{os.getpid() % 10000}{n}"[:15]
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.is_cut = False

    def up(self) -> Link:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        return self

    def cut(self) -> None:
        _ip("-n", self.ns, "link", "set", self.ns_if, "down")
        self.is_cut = True

    def heal(self) -> None:
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")
        self.is_cut = False

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)  # takes its end of the veth pair along
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)


@dataclass
class _Namespaced(PostgresCluster):
    """A cluster reached at its namespace's address (healthy() and wait_ready() use dsn())."""

    host: str = ""

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname} connect_timeout=5"


class IsolatedPostgres:
    """A cluster of the default major serving only on ``link``'s namespace address."""

    def __init__(self, name: str, home: Path, link: Link):
        self.link = link
        self.cluster = _Namespaced(name, data_root(home) / name, free_port(), home / f"{name}.log", host=link.ns_ip)
        self.rec: ProcessRecord | None = None

    def dsn(self, dbname: str = "postgres") -> str:
        return self.cluster.dsn(dbname)

    def start(self) -> IsolatedPostgres:
        c = self.cluster
        c.init()
        hba = c.datadir / "pg_hba.conf"
        if HBA not in hba.read_text():
            with open(hba, "a") as f:  # reached from the host's end of the veth pair
                f.write(HBA)
        argv = ["ip", "netns", "exec", self.link.ns, "setpriv", "--reuid=postgres", "--regid=postgres",
                "--clear-groups", str(c.bindir() / "postgres"), "-D", str(c.datadir),
                "-c", f"listen_addresses={self.link.ns_ip}"]
        self.rec = spawn(argv, c.log)  # ip and setpriv exec: the recorded pid is the postmaster's
        c.wait_ready(self.rec)
        return self

    def stop(self) -> None:
        if self.rec is not None:
            if self.link.is_cut:
                self.link.heal()
            stop(self.rec, signal.SIGINT)

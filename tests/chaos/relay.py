"""A TCP relay a test can hold: ``python -m tests.chaos.relay LISTEN TO PORT[,PORT...] CONTROL_DIR``
listens on LISTEN:PORT for each port and relays every connection to TO:PORT, byte for byte.
While the file ``CONTROL_DIR/hold-PORT`` exists, the port's connections relay nothing in
either direction (their bytes wait unread, as across a partition: no reset, no error) and new
ones are accepted but not served; removing the file lets everything flow on.

tests/chaos/test_partitions.py runs one in a network namespace (127.0.0.1 -> the host's end of
the veth pair) and one on the host (that address -> 127.0.0.1), so a process in the namespace
reaches the session's stack at the same addresses it would use on the host (Kafka advertises
127.0.0.1), and one of its paths (to Kafka) can be cut while the others stay.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path


def _held(control: Path, port: int) -> bool:
    return (control / f"hold-{port}").exists()


def _pump(src: socket.socket, dst: socket.socket, control: Path, port: int) -> None:
    try:
        while True:
            if _held(control, port):
                time.sleep(0.05)
                continue
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listen: str, to: str, port: int, control: Path) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((listen, port))
    server.listen(256)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((to, port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b, control, port), daemon=True).start()


def main() -> None:
    listen, to, ports, control = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split(",")], Path(sys.argv[4])
    for port in ports:
        threading.Thread(target=_serve, args=(listen, to, port, control), daemon=True).start()
    print("relaying", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

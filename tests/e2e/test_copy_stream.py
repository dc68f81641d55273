"""The copy's source side reads libpq directly: errors must surface, blocks must add up,
and the writer thread must keep running while the reader waits on the server."""

import threading
import time

import psycopg
import pytest

from reshard.snapshotter.copy_writer import BLOCK_BYTES, _copy_out


def test_rows_arrive_whole_in_blocks_and_errors_surface(env):
    with psycopg.connect(env.dsn("source1"), autocommit=True) as conn:
        blocks = list(_copy_out(conn, "COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g) TO STDOUT"))
        text = b"".join(blocks).decode()
        assert text.count("\n") == 20000 and text.endswith(f"20000\t{'x' * 100}\n")
        assert len(blocks) > 1 and all(len(b) >= BLOCK_BYTES for b in blocks[:-1])
        with pytest.raises(psycopg.errors.DivisionByZero):
            for _ in _copy_out(conn, "COPY (SELECT 1 / (15000 - g) FROM generate_series(1, 20000) g) TO STDOUT"):
                pass
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(_copy_out(conn, "COPY no_such_table TO STDOUT"))
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection is usable afterwards


def test_waiting_for_the_server_releases_the_gil(env):
    spins = 0
    stop = threading.Event()

    def spin():
        nonlocal spins
        while not stop.is_set():
            spins += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.2)
        before, t0 = spins, time.monotonic()
        time.sleep(0.5)
        free = (spins - before) / (time.monotonic() - t0)
        with psycopg.connect(env.dsn("source1"), autocommit=True) as conn:
            before, t0 = spins, time.monotonic()
            list(_copy_out(conn, "COPY (SELECT pg_sleep(0.5)) TO STDOUT"))
            during = (spins - before) / (time.monotonic() - t0)
    finally:
        stop.set()
        t.join()
    # a call that held the GIL while blocked would leave the other thread a few switch intervals
    assert during > 0.2 * free, (during, free)

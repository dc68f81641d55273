"""A part's recorded port counts as free while old connections linger in TIME_WAIT
(after a crash the part must come back on the same address)."""

import socket

from reshard.stack.stack import port_free


def test_a_port_with_a_connection_in_time_wait_is_still_free():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    assert not port_free(port)  # listening: taken
    conn.close()  # the server side closes first: its end of the connection enters TIME_WAIT
    server.close()
    client.close()
    plain = socket.socket()
    try:
        plain.bind(("127.0.0.1", port))
        lingering = False
    except OSError:
        lingering = True  # what the old probe saw: "taken"
    finally:
        plain.close()
    assert lingering
    assert port_free(port)


def test_new_ports_are_below_the_ephemeral_range_where_client_connections_cannot_take_them():
    from reshard.stack.stack import _ephemeral_low, free_port

    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= p < low and port_free(p) for p in ports)
    assert len(ports) > 1  # chosen at random: two stacks starting together do not race for one port

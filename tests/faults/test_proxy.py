"""The fault proxy in front of an echo server on 127.0.0.1: forwarding, each fault and the way back."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.faults.proxy import FaultProxy, ProxyMode

pytestmark = pytest.mark.timeout(20)

# How long a socket must stay quiet before a test accepts that nothing is coming back.
SILENCE_S = 0.3
IO_TIMEOUT_S = 2.0


class EchoServer:
    """Threaded TCP echo server on 127.0.0.1 that records every byte it receives."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # lets the accept loop notice close()
        self.port: int = self._listener.getsockname()[1]
        self.received = bytearray()
        self.connections_accepted = 0
        self._connections: set[socket.socket] = set()
        self._reset: set[socket.socket] = set()
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start accepting connections in a background thread."""
        self._spawn(self._accept_loop)

    def close(self) -> None:
        """Close the listener and every connection, then join all threads."""
        self._closing.set()
        self.close_connections()
        for thread in self._threads:
            thread.join(IO_TIMEOUT_S)
        self._listener.close()

    def close_connections(self, reset: bool = False) -> None:
        """Close every open connection with FIN, or with RST when `reset` is set."""
        with self._changed:
            connections = list(self._connections)
            if reset:
                self._reset.update(connections)
        for connection in connections:
            try:
                # Shutting down the read side wakes the handler's recv(); the handler then closes.
                connection.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
            except OSError:
                pass  # the client already closed it

    @property
    def open_connections(self) -> int:
        """Number of connections whose handler is still running."""
        with self._changed:
            return len(self._connections)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = IO_TIMEOUT_S) -> bool:
        """Wait until `condition()` is true, checking it after each change in this server's state."""
        with self._changed:
            return self._changed.wait_for(condition, timeout_s)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.connections_accepted += 1
                self._connections.add(connection)
                self._changed.notify_all()
            self._spawn(self._echo, connection)

    def _echo(self, connection: socket.socket) -> None:
        try:
            while data := connection.recv(65536):
                with self._changed:
                    self.received += data
                    self._changed.notify_all()
                connection.sendall(data)
        except OSError:
            pass  # a reset from the proxy ends the connection like a close does
        finally:
            with self._changed:
                self._connections.discard(connection)
                reset = connection in self._reset
                self._changed.notify_all()
            if reset:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=IO_TIMEOUT_S)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def closed_by_peer(sock: socket.socket) -> bool:
    """Return whether the peer closed the socket (FIN or RST) within IO_TIMEOUT_S."""
    sock.settimeout(IO_TIMEOUT_S)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def rejected(proxy: FaultProxy) -> bool:
    """Return whether a new connection is closed at once. The RST can arrive before connect() returns."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return True
    with sock:
        return closed_by_peer(sock)


def silent(sock: socket.socket) -> bool:
    """Return whether the socket stays open and receives nothing for SILENCE_S."""
    sock.settimeout(SILENCE_S)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(IO_TIMEOUT_S)
    return False


def wait_until(condition: Callable[[], bool], timeout_s: float = IO_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_forwards_both_directions(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as client:
        assert round_trip(client, b"hello") == b"hello"

        assert proxy.mode is ProxyMode.FORWARD
        assert proxy.wait_for_connections(1, IO_TIMEOUT_S)
        assert proxy.active_connections == 1
        assert proxy.bytes_up == 5
        assert proxy.bytes_down == 5
        assert proxy.bytes_dropped_up == 0
        assert proxy.bytes_dropped_down == 0
        assert bytes(echo.received) == b"hello"


def test_forwards_large_payload_intact(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB, far beyond the socket buffers
    echoed = bytearray()

    with connect(proxy) as client:

        def read_echo() -> None:
            while len(echoed) < len(payload):
                chunk = client.recv(65536)
                if not chunk:
                    return
                echoed.extend(chunk)

        reader = threading.Thread(target=read_echo, daemon=True)
        reader.start()
        client.sendall(payload)
        reader.join(10)

    assert len(echoed) == len(payload)
    assert echoed == payload
    assert proxy.bytes_up == len(payload)
    assert proxy.bytes_down == len(payload)


def test_listens_on_ipv6_loopback(echo: EchoServer) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")

    with FaultProxy("127.0.0.1", echo.port, listen_host="::1") as proxy, connect(proxy) as client:
        assert proxy.address == ("::1", proxy.port)
        assert round_trip(client, b"v6") == b"v6"


def test_address_is_listen_host_and_port(proxy: FaultProxy) -> None:
    host, port = proxy.address

    assert host == "127.0.0.1"
    assert port == proxy.port
    assert port != 0


def test_wait_for_connections_times_out(proxy: FaultProxy) -> None:
    assert not proxy.wait_for_connections(1, 0.05)


@pytest.mark.parametrize("reset", [True, False])
def test_cut_closes_and_rejects_until_restore(proxy: FaultProxy, echo: EchoServer, reset: bool) -> None:
    live = connect(proxy)
    assert round_trip(live, b"before") == b"before"

    proxy.cut(reset=reset)

    assert proxy.mode is ProxyMode.CUT
    assert closed_by_peer(live)
    assert echo.wait_for(lambda: echo.open_connections == 0)
    assert proxy.active_connections == 0
    assert rejected(proxy)
    assert proxy.connections_refused == 1
    assert proxy.connections_accepted == 1
    live.close()

    proxy.restore()

    with connect(proxy) as reconnected:
        assert round_trip(reconnected, b"after") == b"after"
    assert proxy.wait_for_connections(2, IO_TIMEOUT_S)


@pytest.mark.parametrize(("reset", "outcome"), [(True, "reset"), (False, "fin")])
def test_cut_sends_rst_or_fin(proxy: FaultProxy, reset: bool, outcome: str) -> None:
    with connect(proxy) as client:
        assert round_trip(client, b"x") == b"x"

        proxy.cut(reset=reset)

        try:
            seen = "fin" if client.recv(1) == b"" else "data"
        except ConnectionResetError:
            seen = "reset"
        assert seen == outcome


def test_blackhole_keeps_client_open_and_silent(proxy: FaultProxy, echo: EchoServer) -> None:
    old = connect(proxy)
    assert round_trip(old, b"before") == b"before"

    proxy.blackhole()

    assert proxy.mode is ProxyMode.BLACKHOLE
    old.sendall(b"lost")
    assert silent(old)
    old.sendall(b"still writable")
    assert proxy.active_connections == 1
    assert bytes(echo.received) == b"before"
    assert wait_until(lambda: proxy.bytes_dropped_up == len(b"lost") + len(b"still writable"))

    # A reconnect during the blackhole is accepted but never reaches the server.
    during = connect(proxy)
    during.sendall(b"connect")
    assert silent(during)
    assert proxy.wait_for_connections(2, IO_TIMEOUT_S)
    assert echo.connections_accepted == 1

    proxy.restore()

    # Connections that lived through the blackhole stay dead. New ones are forwarded.
    old.sendall(b"after restore")
    assert silent(old)
    assert silent(during)
    with connect(proxy) as fresh:
        assert round_trip(fresh, b"after") == b"after"
    assert bytes(echo.received) == b"beforeafter"
    old.close()
    during.close()


@pytest.mark.parametrize("server_reset", [False, True])
def test_blackhole_hides_close_from_other_side(
    proxy: FaultProxy, echo: EchoServer, server_reset: bool
) -> None:
    first = connect(proxy)
    assert round_trip(first, b"one") == b"one"
    second = connect(proxy)
    assert round_trip(second, b"two") == b"two"
    assert echo.wait_for(lambda: echo.open_connections == 2)

    proxy.blackhole()

    # The client closing does not reach the server: the proxy keeps the upstream side open.
    second.close()
    time.sleep(SILENCE_S)
    assert echo.open_connections == 2
    assert proxy.active_connections == 2

    # The server closing does not reach the client, as when a broker dies and no FIN gets through.
    echo.close_connections(reset=server_reset)
    assert echo.wait_for(lambda: echo.open_connections == 0)
    assert silent(first)
    assert wait_until(lambda: proxy.active_connections == 1)
    first.close()


def test_drop_downstream_reaches_server_only(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as client:
        assert round_trip(client, b"connect") == b"connect"

        proxy.drop_downstream()

        assert proxy.mode is ProxyMode.DROP_DOWNSTREAM
        client.sendall(b"publish")
        assert echo.wait_for(lambda: bytes(echo.received) == b"connectpublish")
        assert silent(client)
        assert proxy.bytes_dropped_down == len(b"publish")

        proxy.restore()

        # The open connection forwards both ways again; the dropped echo is gone for good.
        assert round_trip(client, b"again") == b"again"
        assert proxy.bytes_dropped_down == len(b"publish")


def test_slow_delays_each_direction_in_order(proxy: FaultProxy) -> None:
    delay_s = 0.15
    with connect(proxy) as client:
        assert round_trip(client, b"warm") == b"warm"

        proxy.slow(delay_s)

        assert proxy.mode is ProxyMode.SLOW
        assert proxy.delay_s == delay_s
        started = time.monotonic()
        assert round_trip(client, b"ping") == b"ping"
        elapsed_s = time.monotonic() - started
        assert elapsed_s >= 2 * delay_s  # the delay applies on the way to the server and on the way back

        chunks = [f"chunk-{number};".encode() for number in range(20)]
        for chunk in chunks:
            client.sendall(chunk)
            time.sleep(0.002)
        expected = b"".join(chunks)
        assert recv_exact(client, len(expected)) == expected

        proxy.restore()

        assert proxy.delay_s == 0
        assert round_trip(client, b"fast") == b"fast"


@pytest.mark.parametrize("delay_s", [-0.1, float("nan"), float("inf")])
def test_slow_rejects_invalid_delay(proxy: FaultProxy, delay_s: float) -> None:
    with pytest.raises(ValueError, match="delay_s"):
        proxy.slow(delay_s)

    assert proxy.mode is ProxyMode.FORWARD


def test_unreachable_target_closes_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        free_port = placeholder.getsockname()[1]

    with FaultProxy("127.0.0.1", free_port) as proxy:
        assert rejected(proxy)
        assert wait_until(lambda: proxy.connections_refused == 1)
        assert proxy.connections_accepted == 0


def test_stop_closes_everything(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    proxy.start()
    port = proxy.port
    client = connect(proxy)
    assert round_trip(client, b"hi") == b"hi"

    proxy.stop()

    assert closed_by_peer(client)
    assert echo.wait_for(lambda: echo.open_connections == 0)
    assert not any(thread.name == "faults-proxy" for thread in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    proxy.stop()
    client.close()


def test_start_fails_when_port_in_use(echo: EchoServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        proxy = FaultProxy("127.0.0.1", echo.port, listen_port=taken.getsockname()[1])

        with pytest.raises(OSError):
            proxy.start()

    assert not any(thread.name == "faults-proxy" for thread in threading.enumerate())


def test_mode_changes_logged(proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="faults.proxy"):
        proxy.slow(0.01)
        proxy.restore()

    messages = [record.getMessage() for record in caplog.records if record.name == "faults.proxy"]
    assert len(messages) == 2
    assert "mode forward -> slow (0.010 s)" in messages[0]
    assert "mode slow -> forward" in messages[1]

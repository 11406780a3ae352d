"""A TCP proxy that sits between a client and a server on loopback and breaks the link on request.

The proxy runs an asyncio event loop in one daemon thread. Tests change its mode from any thread:

| mode | new connections | connections already open |
| --- | --- | --- |
| forward | forwarded | forwarded, unless an earlier blackhole killed them |
| cut | accepted, then reset at once | closed at once when `cut()` is called |
| blackhole | accepted and kept open, never connected upstream | kept open, every byte dropped |
| drop_downstream | forwarded | client-to-server bytes forwarded, server-to-client bytes dropped |
| slow | forwarded with the delay | forwarded with the delay on every chunk, order kept |

A connection that lived through a blackhole stays dead after `restore()`. It drops every byte, and when
one side closes or resets, the proxy closes only that side, so the other side never learns of it.
`cut()` and `stop()` close both sides. After drop_downstream or slow, `restore()` resumes plain
forwarding on the connections that are still open.
NOTE: the proxy drops whole TCP reads, not protocol packets, so a stream resumed after drop_downstream
can start in the middle of an MQTT packet. Cut the link after dropping if the client must not see that.
Modes do not combine: each call replaces the mode set before it. A chunk crosses only if the mode
allows it both when the proxy reads it and when it is due to be sent. Each mode-changing method returns
once the event loop has applied the change, and `cut()` once every connection is closed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

logger = logging.getLogger("faults.proxy")

_CHUNK_BYTES = 65536
_QUEUE_CHUNKS = 256  # chunks waiting per direction before the proxy stops reading (slow mode)
_LOOP_CALL_TIMEOUT_S = 5.0


class ProxyMode(enum.StrEnum):
    """Fault the proxy applies to the link."""

    FORWARD = "forward"
    CUT = "cut"
    BLACKHOLE = "blackhole"
    DROP_DOWNSTREAM = "drop_downstream"
    SLOW = "slow"


class _Direction(enum.Enum):
    UP = "client->server"
    DOWN = "server->client"


@dataclass(eq=False)
class _Connection:
    """One client connection and, unless it was accepted in blackhole mode, its upstream connection."""

    number: int
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader | None = None
    upstream_writer: asyncio.StreamWriter | None = None
    blackholed: bool = False
    closed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """TCP proxy from `listen_host:listen_port` to `target_host:target_port` with injectable faults."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.connect_timeout_s = connect_timeout_s

        self._lock = threading.Lock()
        self._accepted = threading.Condition(self._lock)
        self._mode = ProxyMode.FORWARD
        self._delay_s = 0.0
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

        self._serial = 0
        # Client connections kept open: connected upstream, or accepted in blackhole mode.
        self.connections_accepted = 0
        # Client connections closed at once, because the proxy was cut or the target was unreachable.
        self.connections_refused = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_dropped_up = 0
        self.bytes_dropped_down = 0

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._port: int | None = None

    # Lifecycle

    def start(self) -> FaultProxy:
        """Start listening and forwarding in a background thread. Raise OSError if the bind fails."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy.start() was called twice. Create a new proxy instead.")

        self._thread = threading.Thread(target=self._run, name="faults-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

        logger.info(
            "proxy listening on %s:%d, forwarding to %s:%d",
            self.listen_host,
            self._port,
            self.target_host,
            self.target_port,
        )
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then join the proxy thread. A second call does nothing."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return

        assert self._loop is not None and self._stop_event is not None
        self._loop.call_soon_threadsafe(self._stop_event.set)
        thread.join(_LOOP_CALL_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"proxy thread did not stop within {_LOOP_CALL_TIMEOUT_S} s")
        logger.info("proxy on port %d stopped", self._port)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Port the proxy listens on, which the OS picks when `listen_port` is 0."""
        if self._port is None:
            raise RuntimeError("the proxy has no port until start() returns")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """Host and port that clients connect to instead of the target."""
        return self.listen_host, self.port

    @property
    def mode(self) -> ProxyMode:
        """Fault applied at the moment."""
        with self._lock:
            return self._mode

    @property
    def delay_s(self) -> float:
        """Latency added to each chunk in each direction, 0 outside slow mode."""
        with self._lock:
            return self._delay_s

    @property
    def active_connections(self) -> int:
        """Number of client connections open now, dead blackholed ones included."""
        with self._lock:
            return len(self._connections)

    def wait_for_connections(self, count: int, timeout_s: float) -> bool:
        """Wait until `connections_accepted` reaches `count`, and return False if `timeout_s` passes first."""
        with self._accepted:
            return self._accepted.wait_for(lambda: self.connections_accepted >= count, timeout_s)

    # Faults

    def cut(self, reset: bool = True) -> None:
        """Close every connection at once and reject new ones until `restore()`.

        With `reset` both sides get RST, so their next read or write fails with ECONNRESET.
        Without it both sides get FIN, so their reads return end of stream.
        """
        self._set_mode(ProxyMode.CUT)
        self._call_in_loop(self._close_all(reset))

    def blackhole(self) -> None:
        """Keep every connection open but drop all bytes, as on a half-open TCP link to a dead broker."""
        self._set_mode(ProxyMode.BLACKHOLE)

    def drop_downstream(self) -> None:
        """Forward client-to-server bytes and drop server-to-client bytes, such as a PUBACK."""
        self._set_mode(ProxyMode.DROP_DOWNSTREAM)

    def slow(self, delay_s: float) -> None:
        """Delay every chunk in both directions by `delay_s` seconds, keeping their order."""
        if not math.isfinite(delay_s) or delay_s < 0:
            raise ValueError(f"delay_s must be a finite number >= 0, got {delay_s!r}")
        self._set_mode(ProxyMode.SLOW, delay_s)

    def restore(self) -> None:
        """Forward plainly again. Connections that an earlier blackhole killed stay dead."""
        self._set_mode(ProxyMode.FORWARD)

    def _set_mode(self, mode: ProxyMode, delay_s: float = 0.0) -> None:
        with self._lock:
            previous = self._mode
            self._mode = mode
            self._delay_s = delay_s
            if mode is ProxyMode.BLACKHOLE:
                for connection in self._connections:
                    connection.blackholed = True
        if mode is ProxyMode.SLOW:
            logger.info("proxy on port %s: mode %s -> %s (%.3f s)", self._port, previous, mode, delay_s)
        else:
            logger.info("proxy on port %s: mode %s -> %s", self._port, previous, mode)

        # A send that passed its mode check before the change finishes before this call returns.
        self._call_in_loop(asyncio.sleep(0))

    def _call_in_loop(self, coroutine: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        thread = self._thread
        if loop is None or thread is None or not thread.is_alive():
            coroutine.close()
            return
        if threading.current_thread() is thread:
            coroutine.close()
            raise RuntimeError("FaultProxy methods must not be called from the proxy's own thread")
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(_LOOP_CALL_TIMEOUT_S)

    def _route(self, connection: _Connection, direction: _Direction) -> float | None:
        """Return the delay in seconds for a chunk going `direction`, or None to drop it."""
        with self._lock:
            if connection.blackholed or self._mode in (ProxyMode.CUT, ProxyMode.BLACKHOLE):
                return None
            if direction is _Direction.DOWN and self._mode is ProxyMode.DROP_DOWNSTREAM:
                return None
            return self._delay_s

    # Event loop side

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # reported to start() if the loop fails before it is ready
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()
            else:
                logger.exception("proxy event loop failed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._handle_client, self.listen_host, self.listen_port)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()

        await self._stop_event.wait()

        server.close()
        await server.wait_closed()
        await self._close_all(reset=True)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=_LOOP_CALL_TIMEOUT_S)

    async def _close_all(self, reset: bool) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            self._close_connection(connection, reset)

    async def _handle_client(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._handle_connection(client_reader, client_writer)
        finally:
            self._handlers.discard(handler)

    async def _handle_connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        with self._accepted:
            if self._mode is ProxyMode.CUT:
                self.connections_refused += 1
                _close_socket(client_writer, reset=True)
                return
            self._serial += 1
            connection = _Connection(self._serial, client_reader, client_writer)
            connection.blackholed = self._mode is ProxyMode.BLACKHOLE
            self._connections.add(connection)

        try:
            if not connection.blackholed:
                await self._connect_upstream(connection)
            if connection.closed:
                return
            with self._accepted:
                self.connections_accepted += 1
                self._accepted.notify_all()

            connection.tasks.append(asyncio.create_task(self._pump(connection, _Direction.UP)))
            if connection.upstream_reader is not None:
                connection.tasks.append(asyncio.create_task(self._pump(connection, _Direction.DOWN)))
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        finally:
            self._close_connection(connection, reset=False)

    async def _connect_upstream(self, connection: _Connection) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), self.connect_timeout_s
            )
        except OSError as exc:  # TimeoutError included
            logger.warning(
                "proxy connection %d: connecting to %s:%d failed (%s), so the proxy closes the client side",
                connection.number,
                self.target_host,
                self.target_port,
                str(exc) or type(exc).__name__,
            )
            with self._lock:
                self.connections_refused += 1
            self._close_connection(connection, reset=True)
            return

        if connection.closed:  # cut() or stop() ran while the upstream connection was opening
            _close_socket(writer, reset=True)
            return
        connection.upstream_reader = reader
        connection.upstream_writer = writer

    async def _pump(self, connection: _Connection, direction: _Direction) -> None:
        """Read chunks from one side and queue them, with their due time, for the other side."""
        reader = connection.client_reader if direction is _Direction.UP else connection.upstream_reader
        assert reader is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(connection, direction, queue))
        try:
            while True:
                data = await reader.read(_CHUNK_BYTES)
                if not data:
                    break
                delay_s = self._route(connection, direction)
                if delay_s is None:
                    self._count(direction, len(data), dropped=True)
                    continue
                await queue.put((loop.time() + delay_s, data))
            await queue.put(None)
            await sender
        except OSError as exc:
            logger.debug("proxy connection %d: %s failed: %s", connection.number, direction.value, exc)
            with self._lock:
                blackholed = connection.blackholed
            if blackholed:
                # A reset from one side must not reach the other side either.
                source = (
                    connection.client_writer if direction is _Direction.UP else connection.upstream_writer
                )
                assert source is not None
                _close_socket(source, reset=True)
            else:
                self._close_connection(connection, reset=True)
        finally:
            sender.cancel()

    async def _send(
        self,
        connection: _Connection,
        direction: _Direction,
        queue: asyncio.Queue[tuple[float, bytes] | None],
    ) -> None:
        """Write queued chunks to the other side once due, then pass on the end of stream."""
        writer = connection.upstream_writer if direction is _Direction.UP else connection.client_writer
        assert writer is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    self._end_direction(connection, direction)
                    return

                due, data = item
                while (wait_s := due - loop.time()) > 0:
                    await asyncio.sleep(wait_s)
                if self._route(connection, direction) is None:
                    self._count(direction, len(data), dropped=True)
                    continue
                # Count before the write, so the counter already includes any bytes that a peer has received.
                self._count(direction, len(data), dropped=False)
                writer.write(data)
                await writer.drain()
        except OSError as exc:
            logger.debug("proxy connection %d: %s failed: %s", connection.number, direction.value, exc)
            self._close_connection(connection, reset=True)

    def _end_direction(self, connection: _Connection, direction: _Direction) -> None:
        """Pass a FIN from one side to the other, or, on a blackholed connection, keep it from the other."""
        source = connection.client_writer if direction is _Direction.UP else connection.upstream_writer
        target = connection.upstream_writer if direction is _Direction.UP else connection.client_writer
        with self._lock:
            blackholed = connection.blackholed

        if blackholed:
            # The peer that sent FIN is done, but the other side must not learn of it.
            if source is not None:
                _close_socket(source, reset=False)
        elif target is not None and target.can_write_eof() and not target.is_closing():
            target.write_eof()

    def _close_connection(self, connection: _Connection, reset: bool) -> None:
        """Close both sides of a connection and stop its tasks. Later calls do nothing."""
        if connection.closed:
            return
        connection.closed = True
        with self._lock:
            self._connections.discard(connection)

        for writer in (connection.client_writer, connection.upstream_writer):
            if writer is not None:
                _close_socket(writer, reset)
        current = asyncio.current_task()
        for task in connection.tasks:
            if task is not current:
                task.cancel()

    def _count(self, direction: _Direction, size: int, dropped: bool) -> None:
        with self._lock:
            if direction is _Direction.UP and dropped:
                self.bytes_dropped_up += size
            elif direction is _Direction.UP:
                self.bytes_up += size
            elif dropped:
                self.bytes_dropped_down += size
            else:
                self.bytes_down += size


def _close_socket(writer: asyncio.StreamWriter, reset: bool) -> None:
    """Close a socket at once with RST (SO_LINGER 0) if `reset` is set, else with FIN after pending bytes."""
    if writer.is_closing():
        return
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # the socket is already gone, so there is nothing left to reset
        writer.transport.abort()
    else:
        writer.close()

"""Helpers shared by the transport tests (a uniquely named module, imported as such)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from trio_sip.transport.base import Address, Transport


@dataclass(frozen=True)
class Received:
    data: bytes
    source: Address
    transport: Transport
    conn_id: int | None
    time: float


class Inbox:
    """A message handler that records what it gets, for tests to await."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._send, self._recv = trio.open_memory_channel[Received](math.inf)

    async def handler(
        self, data: bytes, source: Address, transport: Transport, conn_id: int | None
    ) -> None:
        item = Received(data, source, transport, conn_id, trio.current_time())
        self.received.append(item)
        self._send.send_nowait(item)

    async def get(self) -> Received:
        """The next message (callers bound the wait with trio.fail_after)."""
        return await self._recv.receive()

    def pending(self) -> int:
        return self._recv.statistics().current_buffer_used


def sip_request(body: bytes = b"", *, branch: str = "z9hG4bK1", method: str = "OPTIONS") -> bytes:
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
        "Call-ID: abc@127.0.0.1\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body


async def wait_until(predicate: Callable[[], bool], poll: float = 0.005) -> None:
    """Poll ``predicate()`` until true; callers bound it with trio.fail_after.

    Polling because what the real-socket tests wait for is a counter moved by
    the kernel's timing (a datagram read, a connection closed): there is no
    event to wait on, and adding one to the transports only for tests is not
    worth it.
    """
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(poll)

#!/usr/bin/env python3
"""Interoperability checks against ringcast's /echo endpoint, using the
independent Python `websockets` client (asyncio API).

Usage: python3 tests/interop/ws_client.py ws://127.0.0.1:PORT/echo

Prints one line per check (PASS/FAIL) and, as its last line,
``python-websockets: N passed, N failed``. Exits 0 only if every check
passed; 1 if any failed; 2 on bad usage; 3 if `websockets` is missing.
Every check is bounded in time; the script only talks to the given URL.

Install the client library with:
    python3 -m pip install -r tests/interop/requirements.txt
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

try:
    import websockets
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed
except ImportError as exc:  # pragma: no cover - exercised by the Rust test
    print(
        f"python-websockets: cannot import websockets.asyncio.client ({exc}); "
        "run: python3 -m pip install -r tests/interop/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(3)

# Bounds on each network step and on each whole check.
STEP_TIMEOUT = 10.0
CHECK_TIMEOUT = 60.0
# The client's own wait for the server to drop TCP after the close
# handshake; the close check requires the broker to be much faster.
CLOSE_TIMEOUT = 5.0

# Payload-length encoding boundaries (7-bit, 16-bit, 64-bit) and 1 MiB.
SIZES = [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20]


class CheckFailed(Exception):
    pass


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def describe(m: str | bytes) -> str:
    kind = "text" if isinstance(m, str) else "binary"
    data = m.encode() if isinstance(m, str) else m
    head = data[:32]
    return f"{kind}({len(data)} bytes, starts {head!r})"


def text_of_len(n: int) -> str:
    """Valid UTF-8 of exactly n bytes mixing 1-, 2-, 3- and 4-byte chars."""
    cycle = "aé€𝄞z"
    out: list[str] = []
    size = 0
    i = 0
    while True:
        c = cycle[i % len(cycle)]
        w = len(c.encode())
        if size + w > n:
            break
        out.append(c)
        size += w
        i += 1
    out.append("x" * (n - size))
    s = "".join(out)
    assert len(s.encode()) == n
    return s


class Client:
    """Opens a connection with bounded timeouts and large-enough limits."""

    def __init__(self, url: str, **kwargs):
        self.url = url
        self.kwargs = dict(
            open_timeout=STEP_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            max_size=4 << 20,
            ping_interval=None,  # no keep-alive pings mixed into the checks
        )
        self.kwargs.update(kwargs)

    def __call__(self):
        return connect(self.url, **self.kwargs)


async def recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)


async def round_trip(ws: ClientConnection, msg: str | bytes) -> None:
    # Send and receive concurrently: a 1 MiB message could otherwise stall
    # on back-pressure while its echo is waiting to be read.
    send = asyncio.create_task(asyncio.wait_for(ws.send(msg), STEP_TIMEOUT))
    try:
        got = await recv(ws)
    finally:
        await send
    expect(type(got) is type(msg), f"sent {describe(msg)}, got {describe(got)}")
    expect(got == msg, f"echo differs: sent {describe(msg)}, got {describe(got)}")


# --- checks -----------------------------------------------------------------


async def check_handshake(url: str) -> None:
    # websockets offers permessage-deflate by default; ringcast does not
    # implement it, so it must not accept the offer.
    async with Client(url)() as ws:
        resp = ws.response
        expect(resp.status_code == 101, f"status {resp.status_code}")
        expect(
            resp.headers.get("Upgrade", "").lower() == "websocket",
            f"Upgrade header {resp.headers.get('Upgrade')!r}",
        )
        expect(ws.subprotocol is None, f"unexpected subprotocol {ws.subprotocol!r}")
        ext = resp.headers.get("Sec-WebSocket-Extensions")
        expect(ext is None, f"server accepted extensions it does not offer: {ext!r}")
        await round_trip(ws, "deflate offered, not negotiated")
    async with Client(url, compression=None)() as ws:
        await round_trip(ws, "no extension offered")


async def check_text_non_ascii(url: str) -> None:
    async with Client(url)() as ws:
        for s in [
            "hello",
            "héllo wörld",
            "你好，世界",
            "🌍🚀 emoji",
            "\u0000 nul and \u007f del",
            "mixed: aé€𝄞 \U0010ffff",
            "",
        ]:
            await round_trip(ws, s)


async def check_text_sizes(url: str) -> None:
    async with Client(url)() as ws:
        for n in SIZES:
            await round_trip(ws, text_of_len(n))


async def check_binary_sizes(url: str) -> None:
    rng = random.Random(1)
    async with Client(url)() as ws:
        for n in SIZES:
            await round_trip(ws, rng.randbytes(n))


async def check_fragmented_async(url: str) -> None:
    async def text_parts() -> AsyncIterator[str]:
        for part in ["frag", "mented", " ", "tëxt ✓", ""]:
            yield part
            await asyncio.sleep(0.01)  # really separate frames on the wire

    async def binary_parts() -> AsyncIterator[bytes]:
        rng = random.Random(2)
        for n in [1, 125, 126, 65_536, 0, 3]:
            yield rng.randbytes(n)
            await asyncio.sleep(0)

    async with Client(url)() as ws:
        await asyncio.wait_for(ws.send(text_parts()), STEP_TIMEOUT)
        got = await recv(ws)
        expect(got == "fragmented tëxt ✓", f"got {got!r}")

        rng = random.Random(2)
        want = b"".join(rng.randbytes(n) for n in [1, 125, 126, 65_536, 0, 3])
        await asyncio.wait_for(ws.send(binary_parts()), STEP_TIMEOUT)
        got = await recv(ws)
        expect(got == want, f"sent {describe(want)}, got {describe(got)}")

        # A multi-byte character split across fragments is still valid text.
        euro = "€".encode()

        async def split_char() -> AsyncIterator[bytes]:
            yield b"price: " + euro[:1]
            yield euro[1:2]
            yield euro[2:] + b"5"

        await asyncio.wait_for(ws.send(split_char(), text=True), STEP_TIMEOUT)
        got = await recv(ws)
        expect(got == "price: €5", f"got {got!r}")


async def check_fragmented_sync(url: str) -> None:
    async with Client(url)() as ws:
        await asyncio.wait_for(ws.send(["a", "b", "c"]), STEP_TIMEOUT)
        got = await recv(ws)
        expect(got == "abc", f"got {got!r}")
        await asyncio.wait_for(ws.send([b"\x00", b"\xff" * 200]), STEP_TIMEOUT)
        got = await recv(ws)
        expect(got == b"\x00" + b"\xff" * 200, f"got {describe(got)}")


async def check_ping_pong(url: str) -> None:
    async with Client(url)() as ws:
        for data in [None, b"", b"ping!", os.urandom(125), "text payload"]:
            waiter = await asyncio.wait_for(ws.ping(data), STEP_TIMEOUT)
            latency = await asyncio.wait_for(waiter, STEP_TIMEOUT)
            expect(latency >= 0, f"latency {latency}")
        # Several pings in flight at once are each answered.
        waiters = [await ws.ping(f"p{i}") for i in range(10)]
        await asyncio.wait_for(asyncio.gather(*waiters), STEP_TIMEOUT)
        await round_trip(ws, "still echoing after pings")


async def check_pipelined(url: str) -> None:
    msgs: list[str | bytes] = [
        f"msg {i} {'é' * i}" if i % 2 == 0 else bytes([i % 256]) * (i * 31)
        for i in range(200)
    ]
    async with Client(url)() as ws:
        for m in msgs:
            await asyncio.wait_for(ws.send(m), STEP_TIMEOUT)
        for i, m in enumerate(msgs):
            got = await recv(ws)
            expect(got == m, f"echo #{i}: sent {describe(m)}, got {describe(got)}")


async def check_concurrent(url: str) -> None:
    async def one(i: int) -> None:
        async with Client(url)() as ws:
            for j in range(5):
                await round_trip(ws, f"conn {i} msg {j}")
                await round_trip(ws, i.to_bytes(4, "big") * (j + 1))

    await asyncio.gather(*(one(i) for i in range(50)))


async def check_close_normal(url: str) -> None:
    ws = await Client(url)()
    await round_trip(ws, "before close")
    start = time.monotonic()
    await asyncio.wait_for(ws.close(1000, "bye"), STEP_TIMEOUT)
    elapsed = time.monotonic() - start
    expect(ws.close_code == 1000, f"close_code {ws.close_code}")
    rcvd = ws.protocol.close_rcvd
    expect(rcvd is not None, "no close frame received from the broker")
    expect(rcvd.code == 1000, f"broker replied with close code {rcvd.code}")
    expect(
        ws.protocol.close_rcvd_then_sent is False,
        "the broker's close should be the reply to ours",
    )
    # The broker (server) closes TCP right after the handshake; the client
    # only closes it itself after CLOSE_TIMEOUT.
    expect(
        elapsed < CLOSE_TIMEOUT / 2,
        f"close took {elapsed:.2f}s: the broker did not end the TCP connection",
    )
    try:
        await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
    except ConnectionClosed as exc:
        expect(exc.rcvd is not None and exc.rcvd.code == 1000, f"{exc!r}")
    else:
        raise CheckFailed("recv() after close returned a message")


async def check_close_custom_code(url: str) -> None:
    async with Client(url)() as ws:
        await asyncio.wait_for(ws.close(4000, "application code"), STEP_TIMEOUT)
        expect(ws.close_code == 4000, f"close_code {ws.close_code}")


CHECKS: list[tuple[str, Callable[[str], Awaitable[None]]]] = [
    ("handshake", check_handshake),
    ("text_non_ascii", check_text_non_ascii),
    ("text_sizes", check_text_sizes),
    ("binary_sizes", check_binary_sizes),
    ("fragmented_async_iterator", check_fragmented_async),
    ("fragmented_sync_iterable", check_fragmented_sync),
    ("ping_pong", check_ping_pong),
    ("pipelined_200", check_pipelined),
    ("concurrent_50", check_concurrent),
    ("close_1000", check_close_normal),
    ("close_4000", check_close_custom_code),
]


async def main(url: str) -> int:
    print(f"websockets {websockets.__version__}, python {sys.version.split()[0]}")
    passed = failed = 0
    for name, check in CHECKS:
        start = time.monotonic()
        try:
            await asyncio.wait_for(check(url), CHECK_TIMEOUT)
        except CheckFailed as exc:
            failed += 1
            print(f"FAIL {name}: {exc}")
        except (asyncio.TimeoutError, TimeoutError):
            failed += 1
            print(f"FAIL {name}: timed out")
            traceback.print_exc(file=sys.stdout)
        except Exception as exc:  # noqa: BLE001 - report any error as a failure
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"PASS {name} ({time.monotonic() - start:.2f}s)")
    print(f"python-websockets: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].startswith("ws://"):
        print("usage: ws_client.py ws://HOST:PORT/echo", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1])))

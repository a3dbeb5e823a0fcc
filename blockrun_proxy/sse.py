"""An incremental decoder for ``text/event-stream`` bodies: bytes in, ``data`` payloads out.

The proxy never parses what it relays; this is for the in-process provider, which
must hand its caller objects. It follows the parts of the SSE format the gateway
uses: events end at a blank line, ``data:`` lines of one event are joined with
``\\n``, comment lines (``:``) and other fields are ignored, and ``\\r\\n`` or ``\\r``
line ends are accepted. Bytes are buffered only up to the end of the current line,
so an event split across network reads (or a frame larger than any read buffer)
comes out whole.
"""

from __future__ import annotations

DONE = "[DONE]"


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The ``data`` of every event completed by ``chunk``, in order."""
        self._buffer += chunk
        events: list[str] = []
        while True:
            line, found = self._next_line()
            if not found:
                return events
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                # One optional space after the colon belongs to the syntax, not the value.
                self._data.append(value[1:].decode() if value[:1] == b" " else value.decode())

    def close(self) -> list[str]:
        """An event left without its closing blank line when the body ended."""
        rest = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return rest

    def _next_line(self) -> tuple[bytes, bool]:
        buffer = self._buffer
        cut = -1
        for end in (b"\n", b"\r"):
            at = buffer.find(end)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut == -1:
            return b"", False
        step = 1
        if buffer[cut : cut + 2] == b"\r\n":
            step = 2
        elif buffer[cut : cut + 1] == b"\r" and cut + 1 == len(buffer):
            # A lone \r at the end may be the first half of \r\n: wait for the next byte.
            return b"", False
        self._buffer = buffer[cut + step :]
        return buffer[:cut], True

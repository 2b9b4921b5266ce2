"""uvicorn's h11 protocol with a deadline for a connection's request headers (closes idle and slow connections).

Written by hand because uvicorn has no such option: ``timeout_keep_alive`` starts only after a response and
any byte resets it, so a connection that never completes its request line and headers is otherwise held forever.
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_BODY = b"the request headers did not arrive within the server's deadline"
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


def header_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """An H11Protocol class that closes a connection (408) whose request headers are not complete SECONDS
    after it opened, or after its previous response (plus uvicorn's keep-alive time)."""

    class HeaderDeadlineProtocol(H11Protocol):
        header_seconds = seconds

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(self.header_seconds)

        def _arm(self, delay: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(delay, self._headers_late)

        def _disarm(self) -> None:
            handle = getattr(self, "_deadline", None)
            if handle is not None:
                handle.cancel()
                self._deadline = None

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers arrived: the app's own deadlines take over
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(self.timeout_keep_alive + self.header_seconds)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    return HeaderDeadlineProtocol

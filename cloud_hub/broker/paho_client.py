"""paho's Client with a lean receive path for the hub's ingest link.

Profiled under bench/ingest.py, paho's own per-PUBLISH work was the bare subscriber's ceiling (~30 us a
message here): three or more recv() calls per packet (command byte, length bytes, body) and, in
`_handle_publish`, an MQTT v5 `Properties` object (its constructor builds two dicts and its `clear()`
calls hasattr 27 times), an `MQTTMessage`, the arguments of a DEBUG log call, a topic-matcher walk and
two mutexes. This subclass

- serves paho's small reads from one 64 KiB recv() (`buffered()` says when bytes wait there, which epoll
  cannot see), and
- decodes a v5 QoS 0/1 PUBLISH that carries no properties straight into `on_publish(topic, payload)`,
  then acknowledges QoS 1 as paho would, or, with `manual_ack=True`, hands its message id to
  `on_unacked(mid)` so the owner acknowledges it later (`ack(mid, 1)`, e.g. once it is committed).
  Anything else (QoS 2, properties present, MQTT 3, a topic that is not UTF-8, a truncated packet) goes
  through paho's own code and `on_message`.

Both override private methods of paho 2.x (`_sock_recv`, `_handle_publish`), so the test suite checks
that the installed paho still calls them; if a paho release stops doing so, the stock paths simply run.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

RECV_CHUNK = 65536

PublishHandler = Callable[[str, bytes], None]


class LeanClient(mqtt.Client):
    """A paho `Client` whose receive path skips paho's per-message objects for plain publishes."""

    def __init__(
        self, *args: Any, on_publish: PublishHandler, on_unacked: Callable[[int], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_fast_publish = on_publish
        self.on_unacked = on_unacked
        self.fast_publishes = 0  # how many took the lean path (tests, debugging)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: mqtt.SocketLike | None = None

    def buffered(self) -> bool:
        """True while received bytes of the current socket wait in the read buffer."""
        return self._rpos < len(self._rbuf) and self._rsock is self._sock

    # --- overrides of paho internals ------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf) or self._rsock is not self._sock:
            buf, pos = self._fill(), 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _fill(self) -> bytes:
        # Raise as paho's own _sock_recv does: BlockingIOError when nothing is there, ConnectionError if closed.
        sock = self._sock
        self._rbuf, self._rpos, self._rsock = b"", 0, sock
        if sock is None:
            raise ConnectionError("self._sock is None")
        try:
            data = sock.recv(RECV_CHUNK)
        except ssl.SSLWantReadError as err:
            raise BlockingIOError() from err
        except ssl.SSLWantWriteError as err:
            self._call_socket_register_write()
            raise BlockingIOError() from err
        self._rbuf = data
        return data

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet = self._in_packet["packet"]  # a bytearray
        qos = (header & 0x06) >> 1
        if qos == 2 or self._protocol != MQTTProtocolVersion.MQTTv5 or len(packet) < 3:
            return super()._handle_publish()
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        props_at = topic_end + 2 if qos else topic_end
        # The byte at props_at is the properties' length (a varint): 0 means none.
        if len(packet) <= props_at or packet[props_at] != 0:
            return super()._handle_publish()
        try:
            topic = packet[2:topic_end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        self.fast_publishes += 1
        self.on_fast_publish(topic, bytes(memoryview(packet)[props_at + 1 :]))
        if qos == 1:
            mid = (packet[topic_end] << 8) | packet[topic_end + 1]
            if not self._manual_ack:
                return self._send_puback(mid)
            if self.on_unacked is not None:
                self.on_unacked(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

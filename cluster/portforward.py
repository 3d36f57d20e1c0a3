"""A local TCP port relayed to a pod's port through the Kubernetes API (like `kubectl port-forward`).

Each accepted connection opens its own port-forward stream with the official client, so many
concurrent benchmark connections work. `close()` ends the listener and every relay.
"""

from __future__ import annotations

import select
import socket
import threading

from kubernetes import client
from kubernetes.stream import portforward

ACCEPT_POLL_S = 0.2
RELAY_CHUNK = 65536
CONNECT_TIMEOUT_S = 30.0  # to open one stream; the client's own handshake has no deadline


class PortForward:
    def __init__(self, api: client.ApiClient, namespace: str, pod: str, port: int):
        self._configuration = api.configuration
        self.namespace, self.pod, self.port = namespace, pod, port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.local_port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: set = set()
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name=f"port-forward-{pod}", daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            readable, _, _ = select.select([self._listener], [], [], ACCEPT_POLL_S)
            if not readable:
                continue
            try:
                local, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(local,), daemon=True).start()

    def _open_stream(self):
        """One port-forward stream. The client's portforward() swaps its ApiClient's request function
        while it connects, so each stream gets a client of its own: one whose handshake stalls holds
        up no other."""
        core = client.CoreV1Api(client.ApiClient(self._configuration))
        return portforward(core.connect_get_namespaced_pod_portforward, self.pod, self.namespace, ports=str(self.port))

    def _open_within(self, seconds: float):
        """The stream, or None when it failed or was not open within `seconds`. The client's
        websocket connect has no timeout (kubernetes/stream/ws_client.py: create_websocket), so it
        runs in a thread of its own; a stream that opens after it was given up on is closed."""
        opened: list = []
        ready, gate = threading.Event(), threading.Lock()

        def open_stream() -> None:
            try:
                stream = self._open_stream()
            except Exception:  # noqa: BLE001 - the API may refuse or drop; the caller sees None
                stream = None
            with gate:
                if not ready.is_set():
                    opened.append(stream)
                    ready.set()
                    return
            if stream is not None:
                stream.close()  # given up on

        threading.Thread(target=open_stream, name=f"port-forward-open-{self.pod}", daemon=True).start()
        ready.wait(seconds)
        with gate:
            ready.set()  # from now on a late stream is closed by its opener
            return opened[0] if opened else None

    def _relay(self, local: socket.socket) -> None:
        stream = self._open_within(CONNECT_TIMEOUT_S)
        try:
            remote = stream.socket(self.port) if stream is not None else None
        except Exception:  # noqa: BLE001 - the stream broke as it opened
            remote = None
        if remote is None:  # the client sees a closed connection
            local.close()
            if stream is not None:
                stream.close()
            return
        with self._lock:
            self._sockets.update((local, remote))
        try:
            _pump(local, remote, self._closed)
        finally:
            for sock in (local, remote):
                sock.close()
            stream.close()
            with self._lock:
                self._sockets.difference_update((local, remote))

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._acceptor.join(timeout=5)


def _pump(a, b, closed: threading.Event) -> None:
    """Copy bytes both ways until either side closes or the forward is closed."""
    peers = {a: b, b: a}
    while not closed.is_set():
        readable, _, _ = select.select(list(peers), [], [], ACCEPT_POLL_S)
        for sock in readable:
            try:
                data = sock.recv(RELAY_CHUNK)
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)

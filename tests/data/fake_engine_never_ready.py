"""A stand-in engine that listens on --port and answers 503 to every request, forever."""

import http.server
import sys

port = int(sys.argv[sys.argv.index("--port") + 1])


class Loading(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b'{"error":{"message":"Loading model"}}')

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", port), Loading).serve_forever()

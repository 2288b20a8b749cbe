"""A partner app's webhook receiver for the tests: verifies every delivery with the official
`standardwebhooks` package (not written on this project) and records it.

    python3 tests/receiver.py SECRET_FILE OUT_FILE [FAIL_FIRST [PORT]]

Prints the port it listens on (loopback; PORT, or one the OS chooses), then serves until killed. Each
request appends one JSON line to OUT_FILE: {"webhook_id", "verified", "status", "body"}.
The first FAIL_FIRST verified deliveries are answered 500; a delivery that does not verify
is answered 401.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

secret = open(sys.argv[1]).read().strip()
out = sys.argv[2]
fail_first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
port = int(sys.argv[4]) if len(sys.argv) > 4 else 0
verifier = Webhook(secret)
seen = {"verified": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = verifier.verify(body, headers)
            verified = True
        except Exception:
            payload, verified = None, False
        if not verified:
            status = 401
        else:
            seen["verified"] += 1
            status = 500 if seen["verified"] <= fail_first else 204
        with open(out, "a") as f:
            f.write(json.dumps({"webhook_id": headers.get("webhook-id"), "verified": verified,
                                "status": status, "body": payload}) + "\n")
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", port), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

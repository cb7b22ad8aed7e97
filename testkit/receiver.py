"""A webhook receiver for the tests, with its own Standard Webhooks 1.0 verifier written from the
specification (Python's standard library only), independent of the server's code.

Prints its port on the first line of standard output. Every webhook request is appended, as one
JSON line, to the log file given as the first argument: its path, method, the headers that matter,
whether its signature verified with any configured secret, the decoded body, and the status it
was answered with. Control requests:
  POST /_mode    body "200", "503", "429:0.3" (status and Retry-After seconds), "410", "hang"
  POST /_secret  body: a whsec_ secret to verify with (may be called several times)
"""

import base64, gzip, hashlib, hmac, json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]
state = {"mode": "200", "secrets": []}
lock = threading.Lock()


def verify(headers, body):
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    sigs = headers.get("webhook-signature", "")
    if not msg_id or not ts or not sigs:
        return False
    if abs(time.time() - int(ts)) > 300:
        return False
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    for secret in state["secrets"]:
        key = base64.b64decode(secret.split("_", 1)[1])
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for s in sigs.split(" "):
            version, _, sig = s.partition(",")
            if version == "v1" and hmac.compare_digest(expected, sig):
                return True
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        n = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(n)
        if self.path == "/_mode":
            with lock:
                state["mode"] = raw.decode()
            return self.answer(200)
        if self.path == "/_secret":
            with lock:
                state["secrets"].append(raw.decode())
            return self.answer(200)
        with lock:
            mode = state["mode"]
        hung = mode == "hang"
        if hung:
            # Longer than the server waits: the server has given up by the time this answers,
            # so it is logged as not delivered (status 0).
            time.sleep(5)
            mode = "200"
        body = gzip.decompress(raw) if self.headers.get("content-encoding") == "gzip" else raw
        status, _, retry = mode.partition(":")
        status = int(status)
        rec = {
            "path": self.path,
            "method": self.command,
            "webhook_id": self.headers.get("webhook-id"),
            "signatures": len(self.headers.get("webhook-signature", "").split(" ")),
            "verified": verify(self.headers, body),
            "gzip": self.headers.get("content-encoding") == "gzip",
            "authorization": self.headers.get("authorization"),
            "custom": self.headers.get("x-custom"),
            "body": json.loads(body),
            "status": 0 if hung else status,
        }
        with lock:
            with open(LOG, "a") as f:
                f.write(json.dumps(rec) + "\n")
        extra = {"Retry-After": retry} if retry else {}
        self.answer(status, extra)

    def answer(self, status, extra=None):
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", "0")
        self.end_headers()

    do_POST = handle_any
    do_PUT = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

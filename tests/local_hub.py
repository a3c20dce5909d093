"""A Hugging Face Hub on 127.0.0.1 for tests: serves ``root/<owner>/<name>/<file>`` at the hub's resolve URLs
(``/<owner>/<name>/resolve/<revision>/<file>``) with the headers ``hf_hub_download`` reads (commit, ETag, size), and
counts the requests."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: Counter = Counter()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _file(self) -> Path | None:
                parts = unquote(self.path.split("?", 1)[0]).strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve" or parts[3] != COMMIT:
                    return None
                path = hub.root / parts[0] / parts[1] / "/".join(parts[4:])
                return path if path.is_file() else None

            def _head(self) -> bytes | None:
                path = self._file()
                hub.requests[(self.command, self.path)] += 1
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                return body

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                body = self._head()
                if body is not None:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self) -> int:
        return sum(n for (method, _), n in self.requests.items() if method == "GET")

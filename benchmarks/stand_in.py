"""What the HTTP benchmarks share: a stand-in for Label Studio's token-protected upload route and the
``/predict`` body Label Studio sends for a session of smart keypoints."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

TOKEN = "0123456789abcdef0123456789abcdef01234567"
CONFIG = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()


def serve_files(files: dict[str, bytes]) -> ThreadingHTTPServer:
    """Serve ``files`` (URL path -> JPEG bytes) on a loopback port; 401 without ``Token TOKEN``, 404 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            data = files.get(self.path)
            if self.headers.get("Authorization") != f"Token {TOKEN}" or data is None:
                self.send_response(401 if data is not None else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def predict_payload(task_id: int, image: str, w: int, h: int, clicks: list[tuple[float, float, bool]]) -> dict:
    """A ``/predict`` body with every click so far (pixels of a ``w`` x ``h`` image) as smart keypoints."""
    points = [{"original_width": w, "original_height": h, "image_rotation": 0,
               "value": {"x": 100 * x / w, "y": 100 * y / h, "keypointlabels": ["Object"]},
               "is_positive": p, "from_name": "tag2", "to_name": "image", "type": "keypointlabels"}
              for x, y, p in clicks]
    return {"tasks": [{"id": task_id, "data": {"image": image}}], "project": "1.0", "label_config": CONFIG,
            "params": {"context": {"result": points}}}


def session_clicks(obj: np.ndarray, n: int, seed: int,
                   first: tuple[float, float] | None = None) -> list[tuple[float, float, bool]]:
    """``n`` clicks ``(x, y, positive)`` on the HxW bool ``obj``: ``first`` (default the object's median pixel),
    then alternately a negative click outside and a positive one inside, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(obj)
    bys, bxs = np.nonzero(~obj)
    x0, y0 = first if first is not None else (float(np.median(xs)), float(np.median(ys)))
    out = [(x0, y0, True)]
    for i in range(1, n):
        if i % 2:
            j = rng.integers(bys.size)
            out.append((float(bxs[j]), float(bys[j]), False))
        else:
            j = rng.integers(ys.size)
            out.append((float(xs[j]), float(ys[j]), True))
    return out

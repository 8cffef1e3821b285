"""Development server: ``python -m backend --host 127.0.0.1 --port 9090``."""

from __future__ import annotations

import argparse

from backend.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9090)
    args = ap.parse_args()
    create_app().run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()

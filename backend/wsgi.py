"""gunicorn entry point: ``gunicorn --workers 1 --threads 8 backend.wsgi:app`` (no ``--preload`` with CUDA)."""

from backend.app import create_app

app = create_app()

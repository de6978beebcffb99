"""The HTTP server: the ASGI app over a project (see app.py), its metrics and schema."""

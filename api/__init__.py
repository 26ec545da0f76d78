"""The HTTP API of facejobs (FastAPI): `create_app()` builds it; it never imports torch or workers."""

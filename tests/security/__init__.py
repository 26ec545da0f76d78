"""Security: who may see what, what may be written where, and what a request may cost the server."""

"""What callers and logs may see: URLs without their secrets, messages without server paths.

Full details (tracebacks, paths) stay in the server's log under an error id the caller is shown.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
# Query parameters that carry a secret in the URLs facejobs reads (redis-py, SQLAlchemy, kombu).
SECRET_PARAMS = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with any password (userinfo or a secret-looking query parameter) replaced by `***`.

    `redis://:s3cret@host:6379/0` -> `redis://:***@host:6379/0`; the user name, host, port, path and
    other parameters are kept so the line still says where it connects.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # not parseable as a URL: say nothing of it rather than risk printing a secret
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        user, has_password, _ = creds.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*/:")
    # Replace the parts in the text rather than re-joining them: urlunsplit would turn
    # `sqlite:////abs/path` into `sqlite://abs/path`.
    out = url.replace(f"//{parts.netloc}", f"//{netloc}", 1) if netloc != parts.netloc else url
    return out.replace(f"?{parts.query}", f"?{query}", 1) if query != parts.query else out


# An absolute path with at least two parts, not inside a URL or an object key (`jobs/<id>/x.png`).
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+~-]+/)+([\w.@+~-]*)")


def scrub_paths(text: str) -> str:
    """`text` with every absolute server path cut to `.../<its last part>` (callers see file names only).

    `cannot identify image file '/tmp/facejobs-upload-1f/image_a'` -> `... '.../image_a'`.
    """
    return ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}" if m.group(1) else "...", text)


def new_error_id() -> str:
    """A short random id that ties a caller's error message to the traceback in the server's log."""
    return secrets.token_hex(6)

"""What an id of a job, dataset or model may look like."""

from __future__ import annotations

import re

# Ids are uuid4 hex; anything else cannot exist, so it is a 404 (or a bad cursor) without asking the
# database, and a NUL byte or a 10 kB id never reaches it.
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

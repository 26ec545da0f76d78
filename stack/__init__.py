"""The commands that run the stack: `facejobs up`, `api`, `worker`, `reaper`, `migrate`, `keys`, `make demo`.

Kept apart from `client/` (which only talks HTTP) because these start the server's processes and
reach into its packages (`api`, `workers`, the database); `jobs/` stays the domain both sides import.
`stack.cli` is the one `facejobs` command that joins the two groups.
"""

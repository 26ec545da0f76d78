"""The facejobs SDK and the commands that only talk HTTP.

`client.sdk.Client` is the public client of the API (notebooks, scripts, tests, the CLI);
`client.commands` are the `facejobs` commands built on it (submit, jobs, show, cancel, artifacts,
datasets, workers). Nothing here imports the server's packages (`api`, `workers`): a user of the
platform needs the HTTP API and nothing else (STYLE habit 12, faces over the SDK).
"""

from client.sdk import ApiError, Client, WaitTimeout, zip_folder

__all__ = ["ApiError", "Client", "WaitTimeout", "zip_folder"]

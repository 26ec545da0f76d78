"""The `facejobs` labels, filters, compare and delete commands, as a person types them, against a served API."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

from jobs.states import JobStatus
from tests.support.factories import add_artifact, add_job, key_id
from tests.support.served import ServedApp
from tests.support.services import REPO, Stack


def test_tag_note_filter_compare_and_delete_from_the_command_line(services_stack: Stack) -> None:
    stack = services_stack
    served = ServedApp(stack.app)

    def facejobs(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "stack.cli", "--url", served.url, "--api-key", stack.key, *args],
            cwd=REPO, env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        out = facejobs("submit", "probe", "-p", "matmul_size=32", "--name", "cli probe", "-t", "cli", "-t", "v1",
                       "--notes", "from the shell")  # fmt: skip
        job_id = out.split()[3]
        job = stack.client.get(f"/jobs/{job_id}").json()
        assert (job["name"], job["tags"], job["notes"]) == ("cli probe", ["cli", "v1"], "from the shell")
        assert facejobs("tag", job_id, "+best", "-v1", "extra").strip() == f"{job_id}: cli best extra"
        assert facejobs("note", job_id, "lr too high", "--name", "renamed").strip() == (
            f"{job_id}: name 'renamed', notes 11 characters"
        )
        assert stack.client.get(f"/jobs/{job_id}").json()["notes"] == "lr too high"

        owner = key_id(stack)
        done = [
            add_job(stack, owner, status=JobStatus.SUCCEEDED, params={"lr": lr, "seed": 0}, result={"acc": acc},
                    name=f"run {lr}", tags=["cli"])
            for lr, acc in ((0.1, 0.5), (0.2, 0.75))
        ]  # fmt: skip
        listed = facejobs("jobs", "--tag", "cli", "--tag", "best").splitlines()
        assert len(listed) == 2 and listed[1].startswith(job_id) and listed[1].endswith("renamed [cli best extra]")
        assert [line.split()[0] for line in facejobs("jobs", "--q", "RUN 0.").splitlines()[1:]] == done[::-1]
        assert [line.split()[0] for line in facejobs("jobs", "--name", "run 0.1").splitlines()[1:]] == done[:1]

        rows = list(csv.reader(io.StringIO(facejobs("compare", *done))))
        assert rows == [["id", "name", "kind", "status", "param.lr", "metric.acc"],
                        [done[0], "run 0.1", "probe", "succeeded", "0.1", "0.5"],
                        [done[1], "run 0.2", "probe", "succeeded", "0.2", "0.75"]]  # fmt: skip
        groups = list(csv.reader(io.StringIO(facejobs("compare", *done, "--table", "groups"))))
        assert [r[:3] for r in groups] == [["kind", "param.lr", "n"], ["probe", "0.1", "1"], ["probe", "0.2", "1"]]

        add_artifact(stack, done[0], "probe.json", b"x" * 10, "application/json")
        assert facejobs("delete", done[0]).strip() == "deleted 1 job(s), 1 stored objects, 10 bytes"
        assert stack.client.get(f"/jobs/{done[0]}").status_code == 404
    finally:
        served.stop()

"""A job's log: stdout, stderr and logging captured by the worker, stored in chunks, tailed and downloaded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from jobs.logstore import LogIndex, read_from, read_index, utf8_prefix
from jobs.store import LocalStore
from tests.support.jobs import FAST_LEASES, submit, wait_http
from tests.support.s3server import free_ports
from tests.support.services import REPO, Stack
from workers import logcapture
from workers.logcapture import AttemptLog, capturing


def test_capture_stores_chunks_readable_from_any_offset(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    attempt_log = AttemptLog(store, "j1", 2)
    stdout, stderr, handlers = sys.stdout, sys.stderr, list(logging.getLogger().handlers)
    with capturing(attempt_log):
        print("first line")
        sys.stderr.write("to stderr é\n")
        logging.getLogger("facejobs.test").warning("a warning %d", 7)
        attempt_log.flush()  # the writer thread's job, now
        print("second line")
    # Restored: the streams and the root logger's handlers are the ones before.
    assert (sys.stdout, sys.stderr, logging.getLogger().handlers) == (stdout, stderr, handlers)
    print("after the block")
    attempt_log.close()
    index = read_index(store, "j1", 2)
    assert index is not None and index.done and len(index.chunks) == 2
    text = read_from(store, "j1", 2, index, 0, 1 << 20).decode()
    lines = text.splitlines()
    assert lines[:2] == ["first line", "to stderr é"]
    assert lines[2].endswith(" WARNING facejobs.test: a warning 7") and lines[3:] == ["second line"]
    # From any offset (here inside the first chunk, and the second chunk's start): the same bytes.
    whole = text.encode()
    for offset in (5, index.chunks[1][0], len(whole)):
        assert read_from(store, "j1", 2, index, offset, 1 << 20) == whole[offset:]
    # A limit that cuts a two-byte character keeps whole characters only.
    cut = whole.index("é".encode()) + 1
    assert read_from(store, "j1", 2, index, 0, cut) == whole[: cut - 1]
    assert utf8_prefix("aé".encode()) == "aé".encode()


def test_an_attempt_that_prints_nothing_writes_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    attempt_log = AttemptLog(store, "j2", 1)
    with capturing(attempt_log):
        pass
    attempt_log.close()
    assert read_index(store, "j2", 1) is None and store.list("jobs") == []


def test_two_jobs_in_one_process_keep_their_own_lines(tmp_path: Path) -> None:
    """The threads pool: each job's thread writes to its own log."""
    import threading

    store = LocalStore(tmp_path)
    logs = {name: AttemptLog(store, name, 1) for name in ("a", "b")}
    ready = threading.Barrier(2)

    def job(name: str) -> None:
        with capturing(logs[name]):
            ready.wait()
            for i in range(50):
                sys.stdout.write(f"{name}{i}\n")
            ready.wait()

    threads = [threading.Thread(target=job, args=(n,)) for n in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, attempt_log in logs.items():
        attempt_log.close()
        index = read_index(store, name, 1)
        assert index is not None
        assert read_from(store, name, 1, index, 0, 1 << 20).decode().split() == [f"{name}{i}" for i in range(50)]
    assert logcapture._active == {}


def test_index_round_trip() -> None:
    index = LogIndex(chunks=[(0, 10), (10, 5)], done=True)
    assert LogIndex.from_json(index.to_json()) == index and index.size == 15


def _serve_api(stack: Stack) -> tuple[str, dict[str, str]]:
    """A real API process for the stack (the CLI talks HTTP); its env for the CLI."""
    (port,) = free_ports(1)
    env = {**stack.env, "FACEJOBS_API_PORT": str(port)}
    api = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "api"], cwd=REPO, env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=(stack.home / "api.log").open("wb"), start_new_session=True,
    )  # fmt: skip
    stack.workers.append(api)  # stopped with the workers
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}", {**os.environ, **env, "FACEJOBS_API_KEY": stack.key}


def test_logs_follow_prints_the_runner_lines_within_two_seconds(services_stack: Stack) -> None:
    """`facejobs logs -f` of a running job: each line the runner printed shows within 2 s of its printing."""
    stack = services_stack
    _, env = _serve_api(stack)
    stack.start_worker(extra_env=FAST_LEASES)
    job_id = submit(stack, {"matmul_size": 64, "matmul_repeats": 1, "duration_seconds": 6, "chatter": True})
    follow = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "logs", job_id, "-f"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    seen: list[tuple[float, str]] = []
    assert follow.stdout is not None
    for line in follow.stdout:  # until the command ends with the job
        seen.append((time.time(), line.rstrip("\n")))
    assert follow.wait(30) == 0, (follow.stderr.read() if follow.stderr else "") + (stack.home / "api.log").read_text()
    ticks = [(at, line) for at, line in seen if " stdout at " in line]
    assert [line.split()[1] for _, line in ticks] == [str(n) for n in range(1, 7)], seen
    delays = [at - float(line.rsplit(" ", 1)[1]) for at, line in ticks]
    assert max(delays) < 2.0, delays
    text = [line for _, line in seen]
    assert [f"tick {n} stderr" for n in range(1, 7)] == [t for t in text if t.endswith(" stderr")]
    logged = [t for t in text if t.endswith(" logged")]
    assert len(logged) == 6 and all(" WARNING facejobs.probe: tick " in t for t in logged)
    # The whole log, downloaded: the same lines as the tail.
    whole = stack.client.get(f"/jobs/{job_id}/logs/download")
    assert whole.status_code == 200 and whole.headers["content-type"].startswith("text/plain")
    assert whole.text.splitlines()[0] == "===== attempt 1 =====" and whole.text.splitlines()[1:] == text
    assert stack.client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_failed_attempt_logs_its_traceback_at_its_last_step(stack: Stack) -> None:
    job_id = submit(stack, {"matmul_size": 32, "matmul_repeats": 1, "fail_with": "boom 42"}, max_attempts=1)
    stack.start_worker()
    job = stack.wait_job(job_id)
    assert (job["status"], job["attempt"]) == ("failed", 1)
    error = [e for e in stack.client.get(f"/jobs/{job_id}/events").json()["data"] if e["type"] == "error"][-1]
    page = stack.client.get(f"/jobs/{job_id}/logs").json()
    assert (page["attempt"], page["attempts"], page["done"], page["offset"]) == (1, 1, True, 0)
    assert page["next_offset"] == page["size"] == len(page["text"].encode())
    # The error event names the step the job was at (the fault comes before any progress) and where
    # in the attempt's log its traceback starts.
    assert error["data"] == {"step": 0, "log": {"attempt": 1, "offset": 0}}
    tail = page["text"][error["data"]["log"]["offset"] :]
    assert tail.startswith("\n[attempt 1 failed at step 0]\nTraceback (most recent call last):\n")
    assert tail.rstrip().endswith("RuntimeError: boom 42") and "run_probe" in tail
    assert str(REPO) not in tail  # server paths are cut to file names, as in error messages
    # From an offset, the rest; past the end, nothing and done; another key sees no such job.
    rest = stack.client.get(f"/jobs/{job_id}/logs", params={"offset": 10}).json()
    assert rest["text"] == page["text"][10:] and rest["done"]
    assert stack.client.get(f"/jobs/{job_id}/logs", params={"attempt": 2}).status_code == 404
    assert stack.other.get(f"/jobs/{job_id}/logs").status_code == 404
    assert stack.other.get(f"/jobs/{job_id}/logs/download").status_code == 404
    one = stack.client.get(f"/jobs/{job_id}/logs/download", params={"attempt": 1})
    assert one.text == page["text"]


def test_a_failure_mid_run_is_tied_to_the_step_it_happened_at(services_stack: Stack) -> None:
    stack = services_stack
    params = {"matmul_size": 32, "matmul_repeats": 1, "duration_seconds": 5, "chatter": True, "fail_at_second": 3,
              "fail_with": "diverged"}  # fmt: skip
    job_id = submit(stack, params, max_attempts=1)
    stack.start_worker(extra_env=FAST_LEASES)
    job = stack.wait_job(job_id)
    assert (job["status"], job["progress_step"]) == ("failed", 3)
    error = [e for e in stack.client.get(f"/jobs/{job_id}/events").json()["data"] if e["type"] == "error"][-1]
    assert error["data"]["step"] == 3
    text = stack.client.get(f"/jobs/{job_id}/logs").json()["text"]
    before, failure = text[: error["data"]["log"]["offset"]], text[error["data"]["log"]["offset"] :]
    assert [t.split()[1] for t in before.splitlines() if " stdout at " in t] == ["1", "2", "3"]
    assert failure.startswith("\n[attempt 1 failed at step 3]\nTraceback") and "RuntimeError: diverged" in failure


def test_a_job_that_prints_nothing_has_an_empty_done_log(stack: Stack) -> None:
    job_id = submit(stack, {"matmul_size": 32, "matmul_repeats": 1})
    before = stack.client.get(f"/jobs/{job_id}/logs").json()
    stack.start_worker()
    assert stack.wait_job(job_id)["status"] == "succeeded"
    after = stack.client.get(f"/jobs/{job_id}/logs").json()
    # Queued (attempt 0) and after the end: nothing more will come, either time.
    assert (before["attempt"], before["done"], before["text"]) == (0, True, "")
    assert (after["attempt"], after["done"], after["text"], after["size"]) == (1, True, "", 0)
    # No index and no chunk: the probe's own `ctx.log` line is a log event, not output.
    assert stack.store.list(f"jobs/{job_id}/logs") == []

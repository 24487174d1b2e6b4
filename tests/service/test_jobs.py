"""The job store on its own (SQLite under a tmp --state): queue bound, idempotent submission, recovery, retention."""
from __future__ import annotations

import time

import pytest

from pupick.core.service.jobs import JobStore, QueueFull, TooLarge


def mics(n: int, prefix: str = "m") -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", f"/data/{prefix}{i}.mrc") for i in range(n)]


def test_queue_bound_and_idempotency(tmp_path):
    store = JobStore(tmp_path, max_queue=5)
    with pytest.raises(TooLarge):
        store.submit("pick", {}, mics(6))
    a = store.submit("pick", {}, mics(3), key="k1")
    assert store.submit("pick", {}, mics(3), key="k1") == a  # a retried submission: the same job
    with pytest.raises(QueueFull):
        store.submit("pick", {}, mics(3, "n"))
    assert store.waiting() == 3
    job = store.claim()
    store.mark(job.id, "m0", True, picks=4)
    store.mark(job.id, "m0", True, picks=4)  # idempotent
    store.mark(job.id, "m1", False, reason="m1.mrc: corrupt")
    assert store.waiting() == 1
    store.submit("pick", {}, mics(4, "n"))  # 1 + 4 <= 5
    got = store.get(job.id)
    assert (got.done, got.failed, got.public()["done"]) == (1, 1, 2)
    assert got.failures == [{"micrograph": "m1", "path": "/data/m1.mrc", "error": "m1.mrc: corrupt"}]


def test_recovery_keeps_order_and_honours_cancels(tmp_path):
    store = JobStore(tmp_path)
    first, second, third = (store.submit("pick", {}, mics(2, p)) for p in "abc")
    assert store.claim().id == first
    assert store.claim().id == second
    store.request_cancel(second)  # asked while running, then the server died
    store.close()
    store = JobStore(tmp_path)  # the restart
    assert set(store.recover()) == {first, second}
    assert store.get(second).state == "cancelled"
    assert [store.claim().id, store.claim().id] == [first, third]


def test_retention_removes_finished_jobs_and_outputs(tmp_path):
    store = JobStore(tmp_path)
    old, running = store.submit("pick", {}, mics(1, "a")), store.submit("pick", {}, mics(1, "b"))
    store.job_dir(old).mkdir()
    (store.job_dir(old) / "picks.csv").write_text("micrograph,x,y,score,path\n")
    store.claim()
    store.finish(old, "done")
    store.claim()
    time.sleep(0.05)
    assert store.purge(older_than_s=3600) == []
    assert store.purge(older_than_s=0.01) == [old]
    assert store.get(old) is None and not store.job_dir(old).exists()
    assert store.get(running).state == "running"


def test_job_size_and_queue_are_bounded_apart(tmp_path):
    store = JobStore(tmp_path, max_queue=10, max_job=4)
    with pytest.raises(TooLarge, match="--max-job-micrographs 4"):
        store.submit("pick", {}, mics(5))
    a = store.submit("pick", {}, mics(4, "a"))
    store.submit("pick", {}, mics(4, "b"))
    with pytest.raises(QueueFull):  # 8 wait; 4 more would pass the queue's 10
        store.submit("pick", {}, mics(4, "c"))
    store.submit("pick", {}, mics(2, "c"))
    assert store.waiting() == 10
    with pytest.raises(TooLarge, match="queues at once"):  # a job the queue could never hold is 413, not 429
        JobStore(tmp_path, max_queue=3, max_job=4).submit("pick", {}, mics(4, "d"))
    # the micrograph list a page at a time is the whole list
    assert list(store.iter_micrographs(a, page=3)) == store.micrographs(a)
    assert list(store.iter_micrographs("unknown", page=3)) == []


def test_retention_keeps_a_job_a_download_is_reading(tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("pick", {}, mics(1))
    store.job_dir(job).mkdir()
    store.claim()
    store.finish(job, "done")
    time.sleep(0.05)
    with store.reading(job):
        assert store.purge(older_than_s=0.01) == [] and store.job_dir(job).is_dir()
    assert store.purge(older_than_s=0.01) == [job] and not store.job_dir(job).exists()


def test_mark_done_settles_what_an_earlier_run_finished_in_one_go(tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("pick", {}, mics(4))
    store.claim()
    store.mark(job, "m0", True, picks=7)
    store.mark(job, "m1", False, reason="m1.mrc: corrupt")
    store.mark_done(job, ["m0", "m1", "m2", "not-in-the-job"])  # m1 was picked by a later run after all
    got = store.get(job)
    assert (got.done, got.failed, got.failures) == (3, 0, [])
    assert store.micrographs(job, states=["queued"]) == [("m3", "/data/m3.mrc", "queued")]
    picks = dict(store._db.execute("SELECT name, picks FROM micrographs WHERE job=?", (job,)).fetchall())
    assert picks["m0"] == 7  # a count recorded as it finished is kept

from daemon.ledger.base import Job, JobState
from daemon.ledger.sqlite import SqliteLedger


def job(key: str, created_at: float) -> Job:
    return Job(id=key[:16], key=key, input=f"{key}.png", sidecar=None, input_sha256="a" * 64, sidecar_sha256=None,
               params={"prompt": "x"}, seed=1, created_at=created_at)


def test_a_known_key_is_not_queued_twice(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite3")
    assert ledger.enqueue(job("k1", 1.0))
    assert not ledger.enqueue(job("k1", 2.0))
    assert ledger.counts()[JobState.QUEUED.value] == 1


def test_jobs_are_claimed_in_arrival_order_and_finished(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite3")
    ledger.enqueue(job("late", 2.0))
    ledger.enqueue(job("early", 1.0))
    claimed = ledger.claim_next(now=5.0)
    assert claimed.key == "early" and claimed.state is JobState.RUNNING and claimed.attempts == 1
    ledger.finish(claimed.id, 6.0, {"video": "/o/early.mp4"})
    ledger.fail(ledger.claim_next(now=7.0).id, 8.0, {"error": "bad"})
    assert ledger.claim_next(now=9.0) is None
    states = {j.key: (j.state, j.outputs, j.error) for j in ledger.jobs()}
    assert states == {"early": (JobState.DONE, {"video": "/o/early.mp4"}, None),
                      "late": (JobState.FAILED, {}, {"error": "bad"})}


def test_a_job_left_running_is_queued_again_after_a_restart(tmp_path):
    path = tmp_path / "l.sqlite3"
    ledger = SqliteLedger(path)
    ledger.enqueue(job("k", 1.0))
    ledger.claim_next(now=2.0)
    ledger.close()  # the process died here
    reopened = SqliteLedger(path)
    assert reopened.requeue_running() == ["k"]
    again = reopened.claim_next(now=3.0)
    assert again.key == "k" and again.attempts == 2 and again.seed == 1

"""The ledger's contract, on SQLite and on a real throw-away PostgreSQL cluster."""

import sqlite3

import pytest

from vidrop.daemon.ledger.base import Instance, Job, JobState, TakenInput
from vidrop.daemon.ledger.migrations import LATEST_VERSION
from vidrop.daemon.ledger.sqlite import SqliteLedger

LEASE = 10.0


def job(key: str, created_at: float) -> Job:
    return Job(
        id=key[:16],
        key=key,
        input=f"{key}.png",
        sidecar=None,
        input_sha256="a" * 64,
        sidecar_sha256=None,
        params={"prompt": "x"},
        seed=1,
        created_at=created_at,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def open_ledger(request, tmp_path):
    """A function that opens (another connection to) one fresh ledger of each backend."""
    opened = []
    if request.param == "sqlite":

        def make():
            opened.append(SqliteLedger(tmp_path / "l.sqlite3"))
            return opened[-1]
    else:
        url = request.getfixturevalue("postgres_url")

        def make():
            from vidrop.daemon.ledger.postgres import PostgresLedger

            opened.append(PostgresLedger(url))
            return opened[-1]

    yield make
    for ledger in opened:
        ledger.close()


def test_a_known_key_is_not_queued_twice(open_ledger):
    ledger = open_ledger()
    assert ledger.enqueue(job("k1", 1.0))
    assert not ledger.enqueue(job("k1", 2.0))
    assert ledger.counts()[JobState.QUEUED.value] == 1


def test_jobs_are_claimed_in_arrival_order_and_finished(open_ledger):
    ledger = open_ledger()
    ledger.enqueue(job("late", 2.0))
    ledger.enqueue(job("early", 1.0))
    claimed = ledger.claim_next("a", now=5.0, lease_seconds=LEASE)
    assert claimed.key == "early" and claimed.state is JobState.RUNNING and claimed.attempts == 1
    assert claimed.lease_owner == "a" and claimed.lease_expires_at == 15.0
    assert ledger.finish(claimed.id, 6.0, {"video": "/o/early.mp4"}, owner="a")
    assert ledger.fail(ledger.claim_next("a", now=7.0, lease_seconds=LEASE).id, 8.0, {"error": "bad"}, owner="a")
    assert ledger.claim_next("a", now=9.0, lease_seconds=LEASE) is None
    states = {j.key: (j.state, j.outputs, j.error, j.lease_owner) for j in ledger.jobs()}
    assert states == {
        "early": (JobState.DONE, {"video": "/o/early.mp4"}, None, None),
        "late": (JobState.FAILED, {}, {"error": "bad"}, None),
    }


def test_priority_first_then_arrival_and_done_work_found_by_content(open_ledger):
    ledger = open_ledger()
    ledger.enqueue(job("old", 1.0))
    urgent = job("urgent", 2.0)
    urgent.priority, urgent.content_key = 5, "c1"
    ledger.enqueue(urgent)
    first = ledger.claim_next("a", now=3.0, lease_seconds=LEASE)
    assert first.key == "urgent" and ledger.done_by_content("c1") == []
    ledger.finish(first.id, 4.0, {"video": "v"}, owner="a")
    assert [job.id for job in ledger.done_by_content("c1")] == [first.id]


def model_job(key: str, created_at: float, model: str, priority: int = 0) -> Job:
    queued = job(key, created_at)
    queued.params, queued.priority = {"prompt": "x", "model": model}, priority
    return queued


def claim_order(ledger, now: float, prefer: list[str], patience: float) -> list[str]:
    order = []
    while (
        claimed := ledger.claim_next("a", now=now, lease_seconds=LEASE, prefer_models=prefer, patience_seconds=patience)
    ) is not None:
        order.append(claimed.key)
        ledger.finish(claimed.id, now, {}, owner="a")
    return order


def test_jobs_that_keep_the_loaded_loras_go_first_among_the_loaded_models_jobs(open_ledger):
    ledger = open_ledger()
    for key, created_at, model, loras in [
        ("svd-old", 10.0, "svd", []),
        ("ltx-ink", 20.0, "ltx", ["ink"]),
        ("ltx-both", 30.0, "ltx", ["watercolor", "ink"]),
        ("ltx-watercolor", 40.0, "ltx", ["watercolor"]),
    ]:
        queued = model_job(key, created_at, model)
        queued.params["loras"] = [{"name": name, "weight": 1.0} for name in loras]
        ledger.enqueue(queued)
    keeps = ["", "watercolor", "ink,watercolor"]  # what the loaded ltx keeps: no LoRA, watercolor, both
    claimed = ledger.claim_next(
        "a", now=50.0, lease_seconds=LEASE, prefer_models=["ltx"], prefer_loras=keeps, patience_seconds=300
    )
    assert claimed.key == "ltx-both"
    ledger.finish(claimed.id, 50.0, {}, owner="a")
    claimed = ledger.claim_next(
        "a", now=50.0, lease_seconds=LEASE, prefer_models=["ltx"], prefer_loras=keeps, patience_seconds=300
    )
    assert claimed.key == "ltx-watercolor"


def test_jobs_for_the_loaded_model_go_first_without_starving_others_or_breaking_priority(open_ledger):
    ledger = open_ledger()
    for key, created_at, model, priority in [
        ("svd-old", 10.0, "svd", 0),
        ("ltx-1", 20.0, "ltx", 0),
        ("svd-new", 30.0, "svd", 0),
        ("ltx-2", 40.0, "ltx", 0),
        ("svd-urgent", 50.0, "svd", 5),
    ]:
        ledger.enqueue(model_job(key, created_at, model, priority))
    # ltx is loaded: its jobs overtake older svd ones, but never a higher priority.
    assert claim_order(ledger, now=60.0, prefer=["ltx"], patience=300.0) == [
        "svd-urgent",
        "ltx-1",
        "ltx-2",
        "svd-old",
        "svd-new",
    ]


def test_a_job_that_waited_past_the_patience_runs_before_the_loaded_models_jobs(open_ledger):
    ledger = open_ledger()
    for key, created_at, model in [
        ("svd-old", 10.0, "svd"),
        ("ltx-1", 20.0, "ltx"),
        ("svd-new", 55.0, "svd"),
        ("ltx-2", 56.0, "ltx"),
    ]:
        ledger.enqueue(model_job(key, created_at, model))
    # At 60 s with 30 s patience, svd-old (50 s waiting) and ltx-1 (40 s) are overdue: oldest first.
    assert claim_order(ledger, now=60.0, prefer=["ltx"], patience=30.0) == ["svd-old", "ltx-1", "ltx-2", "svd-new"]
    # Nothing preferred: arrival order, as with one model.
    for key, created_at, model in [("b", 2.0, "svd"), ("a", 1.0, "ltx")]:
        ledger.enqueue(model_job(key, created_at, model))
    assert claim_order(ledger, now=3.0, prefer=[], patience=30.0) == ["a", "b"]


def test_a_living_holder_keeps_its_job_and_a_dead_one_loses_it(open_ledger):
    first, second = open_ledger(), open_ledger()
    first.enqueue(job("k", 1.0))
    held = first.claim_next("a", now=2.0, lease_seconds=LEASE)
    assert second.claim_next("b", now=3.0, lease_seconds=LEASE) is None
    assert first.renew(held.id, "a", now=11.0, lease_seconds=LEASE)  # a heartbeat: the lease ends at 21
    assert second.claim_next("b", now=20.0, lease_seconds=LEASE) is None
    # "a" died: no heartbeat after 11, so at 22 the job is b's, with the seed chosen at admission.
    taken = second.claim_next("b", now=22.0, lease_seconds=LEASE)
    assert taken.id == held.id and taken.lease_owner == "b" and taken.attempts == 2 and taken.seed == 1
    # The late holder can neither renew nor finish it.
    assert not first.renew(held.id, "a", now=23.0, lease_seconds=LEASE)
    assert not first.finish(held.id, 23.0, {"video": "x"}, owner="a")
    assert second.finish(held.id, 24.0, {"video": "y"}, owner="b")
    assert first.get(held.id).outputs == {"video": "y"}


def test_every_claim_carries_a_new_token_and_a_stale_token_changes_nothing(open_ledger):
    ledger = open_ledger()
    ledger.enqueue(job("k", 1.0))
    first = ledger.claim_next("a", now=2.0, lease_seconds=LEASE)
    assert first.claims == 1 and first.lost_attempts == 0
    assert ledger.release(first.id, "a", token=first.claims)
    # The same instance claims it again: the owner matches, the token of the first claim does not.
    second = ledger.claim_next("a", now=3.0, lease_seconds=LEASE)
    assert second.claims == 2 and second.lost_attempts == 0  # released, not lost
    assert not ledger.renew(first.id, "a", now=4.0, lease_seconds=LEASE, token=first.claims)
    assert not ledger.finish(first.id, 4.0, {"video": "x"}, owner="a", token=first.claims)
    assert not ledger.fail(first.id, 4.0, {"error": "x"}, owner="a", token=first.claims)
    assert not ledger.release(first.id, "a", token=first.claims)
    assert ledger.renew(second.id, "a", now=4.0, lease_seconds=LEASE, token=second.claims)
    assert ledger.finish(second.id, 5.0, {"video": "y"}, owner="a", token=second.claims)


def test_claims_from_an_expired_lease_count_as_lost_attempts_and_retry_starts_over(open_ledger):
    ledger = open_ledger()
    ledger.enqueue(job("k", 1.0))
    now = 2.0
    for lost in range(3):  # each holder dies: its lease runs out and the next claim takes the job over
        claimed = ledger.claim_next(f"i{lost}", now=now, lease_seconds=LEASE)
        assert claimed.lost_attempts == lost and claimed.attempts == lost + 1
        now += LEASE + 1
    ledger.fail(claimed.id, now, {"error": "set aside"}, owner="i2", token=claimed.claims)
    ledger.requeue(inputs=["k.png"])
    again = ledger.claim_next("i3", now=now, lease_seconds=LEASE)
    assert (again.attempts, again.lost_attempts, again.claims) == (1, 0, 4)


def test_release_requeue_and_instances(open_ledger):
    ledger = open_ledger()
    ledger.enqueue(job("k", 1.0))
    claimed = ledger.claim_next("a", now=2.0, lease_seconds=LEASE)
    assert ledger.release(claimed.id, "a") and ledger.get(claimed.id).state is JobState.QUEUED
    claimed = ledger.claim_next("a", now=3.0, lease_seconds=LEASE)
    ledger.fail(claimed.id, 4.0, {"error": "out of memory"}, owner="a")
    assert [j.id for j in ledger.requeue(inputs=["k.png"])] == [claimed.id]
    assert ledger.get(claimed.id).state is JobState.QUEUED and ledger.get(claimed.id).error is None
    ledger.register(Instance(id="h:1:t", host="h", pid=1, device="cuda:0", started_at=1.0))
    ledger.seen("h:1:t", 5.0, "idle")
    status = ledger.status(now=6.0)
    assert [(i.host, i.device, i.status) for i in status.instances] == [("h", "cuda:0", "idle")]
    assert status.counts["queued"] == 1


def test_claims_from_many_connections_never_overlap(open_ledger):
    ledgers = [open_ledger() for _ in range(3)]
    for number in range(30):
        ledgers[0].enqueue(job(f"k{number:02}", float(number)))
    claimed = []
    while True:
        taken = [ledger.claim_next(f"i{n}", now=100.0, lease_seconds=LEASE) for n, ledger in enumerate(ledgers)]
        if not any(taken):
            break
        claimed += [j.id for j in taken if j]
    assert sorted(claimed) == sorted(j.id for j in ledgers[0].jobs()) and len(set(claimed)) == 30


def test_a_ledger_from_before_versioning_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the skeleton's table, with one job in it
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, state TEXT NOT NULL, "
            "input TEXT NOT NULL, sidecar TEXT, input_sha256 TEXT NOT NULL, sidecar_sha256 TEXT, "
            "params TEXT NOT NULL, seed INTEGER, created_at REAL NOT NULL, started_at REAL, "
            "finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0, outputs TEXT NOT NULL DEFAULT '{}', "
            "error TEXT)"
        )
        db.execute(
            "INSERT INTO jobs (id, key, state, input, input_sha256, params, seed, created_at) "
            "VALUES ('old', 'old', 'queued', 'old.png', 'a', '{}', 3, 1.0)"
        )
    ledger = SqliteLedger(path)
    assert ledger.schema_version() == LATEST_VERSION
    assert ledger.claim_next("a", now=2.0, lease_seconds=LEASE).seed == 3
    assert ledger.migrate() == []  # a second start applies nothing
    ledger.close()


def test_taken_inputs_are_remembered_replaced_forgotten_and_count_only_while_their_job_exists(open_ledger):
    ledger = open_ledger()
    ledger.enqueue(job("k1", 1.0))
    ledger.enqueue(job("k2", 2.0))
    ledger.remember_inputs(
        [
            TakenInput("a/one.png", "1:2:3:4", "5:6:7:8", "k1", 1.0),
            TakenInput("a/two.json", "9:9:9:9", None, "k2", 1.0),
            TakenInput("b/three.png", "1:1:1:1", None, "no-such-job", 1.0),
        ]
    )
    assert sorted(ledger.taken_inputs()) == [("a/one.png", "1:2:3:4", "5:6:7:8"), ("a/two.json", "9:9:9:9", None)]
    ledger.remember_inputs([TakenInput("a/one.png", "2:2:3:4", None, "k1", 2.0)])  # changed: replaced
    ledger.forget(ledger.jobs()[1].id)  # `vidrop retry` of a refusal: the input is looked at again
    assert list(open_ledger().taken_inputs()) == [("a/one.png", "2:2:3:4", None)]
    ledger.forget_inputs(["a/one.png", "not/there.png"])
    assert list(ledger.taken_inputs()) == []
    assert ledger.queued_count() == 1


def test_a_moved_job_takes_the_new_path_and_a_queued_job_there_gives_way(open_ledger):
    ledger = open_ledger()
    ledger.enqueue(job("old-path", 1.0))
    ledger.enqueue(job("new-path", 2.0))  # intake queued the moved file as a job of its own meanwhile
    assert ledger.move_job("old-path"[:16], key="new-path", input="b/x.png", sidecar="b/x.json", output="b/x")
    [moved] = ledger.jobs()
    assert (moved.id, moved.key, moved.input, moved.sidecar, moved.output) == (
        "old-path",
        "new-path",
        "b/x.png",
        "b/x.json",
        "b/x",
    )
    ledger.enqueue(job("other-old", 3.0))
    ledger.claim_next("a", now=4.0, lease_seconds=LEASE)  # the new-path job runs already: the old one goes
    assert not ledger.move_job("other-old", key="new-path", input="b/x.png", sidecar=None, output="b/x")
    assert [j.key for j in ledger.jobs()] == ["new-path"]


def test_a_retried_refusal_is_found_for_intake_to_read_again(open_ledger):
    ledger = open_ledger()
    refused = job("refused", 1.0)
    refused.params, refused.state = {}, JobState.FAILED
    ledger.enqueue(refused)
    ledger.enqueue(job("ordinary", 2.0))
    assert ledger.requeued_refusals() == []
    assert [j.key for j in ledger.requeue(inputs=["refused.png"])] == ["refused"]
    assert [j.key for j in ledger.requeued_refusals()] == ["refused"]
    assert [j.key for j in ledger.jobs_for_input("refused.png")] == ["refused"]


# -- queue controls (`vidrop pause`, `drain`, `resume`, `cancel`, `priority`) ------------------------------------


def test_a_pause_reaches_every_connection_and_outlasts_it_and_resume_lets_jobs_start(open_ledger):
    from vidrop.daemon.ledger.base import QueueMode

    operator, instance = open_ledger(), open_ledger()
    instance.enqueue(job("k1", 1.0))
    assert instance.control().mode is QueueMode.RUNNING and instance.runnable_count() == 1
    paused = operator.set_control(QueueMode.PAUSED, by="ana@box", now=2.0)
    assert (paused.mode, paused.changed_by, paused.changed_at) == (QueueMode.PAUSED, "ana@box", 2.0)
    operator.close()
    instance.enqueue(job("k2", 3.0))  # intake goes on
    assert instance.claim_next("i1", now=4.0, lease_seconds=LEASE) is None
    assert (instance.queued_count(), instance.runnable_count()) == (2, 0)
    restarted = open_ledger()  # a restart (or another host) reads the same control
    assert restarted.control() == paused
    restarted.set_control(QueueMode.RUNNING, by="bo@box", now=5.0)
    assert instance.claim_next("i1", now=6.0, lease_seconds=LEASE).key == "k1"


def test_a_drain_runs_what_was_queued_before_it_and_holds_later_jobs_until_resumed(open_ledger):
    from vidrop.daemon.ledger.base import QueueMode

    ledger = open_ledger()
    ledger.enqueue(job("before", 1.0))
    ledger.set_control(QueueMode.DRAINING, by="ana@box", now=2.0)
    ledger.enqueue(job("after", 3.0))
    assert ledger.control().drain_before == 2.0 and ledger.runnable_count() == 1
    assert ledger.claim_next("i1", now=4.0, lease_seconds=LEASE).key == "before"
    assert ledger.claim_next("i1", now=4.0, lease_seconds=LEASE) is None and ledger.runnable_count() == 0
    ledger.set_control(QueueMode.RUNNING, by="ana@box", now=5.0)
    assert ledger.control().drain_before is None
    assert ledger.claim_next("i1", now=6.0, lease_seconds=LEASE).key == "after"


def test_a_cancelled_job_never_starts_and_is_claimed_once_to_be_recorded(open_ledger):
    ledger, other = open_ledger(), open_ledger()
    for key, created_at in [("running", 1.0), ("done", 2.0), ("queued", 3.0)]:
        ledger.enqueue(job(key, created_at))
    running = ledger.claim_next("i1", now=4.0, lease_seconds=LEASE)
    done = ledger.claim_next("i1", now=4.0, lease_seconds=LEASE)
    ledger.finish(done.id, 5.0, {}, owner="i1")
    request = {"by": "ana@box", "at": 6.0}
    marked = other.request_cancel(["running", "done", "queued"], request)
    assert [j.key for j in marked] == ["running", "queued"]  # a finished job has nothing to cancel
    assert ledger.cancel_request(running.id) == request and ledger.get(done.id).cancel is None
    assert ledger.claim_next("i2", now=7.0, lease_seconds=LEASE) is None  # the queued one never starts
    assert ledger.runnable_count() == 1  # but it is work: its cancellation waits to be recorded
    taken = ledger.claim_cancelled("i2", now=7.0, lease_seconds=LEASE)
    assert (taken.key, taken.state, taken.lease_owner, taken.cancel) == ("queued", JobState.RUNNING, "i2", request)
    assert other.claim_cancelled("i3", now=7.0, lease_seconds=LEASE) is None  # i1 still holds its running one
    assert other.claim_cancelled("i3", now=15.0, lease_seconds=LEASE).id == running.id  # i1's lease ran out
    ledger.fail(taken.id, 8.0, {"error": "cancelled"}, owner="i2", token=taken.claims)
    ledger.requeue(inputs=["queued.png"])  # `vidrop retry`: it may run again
    assert ledger.get(taken.id).cancel is None and ledger.claim_next("i2", 9.0, LEASE).id == taken.id


def test_priority_of_queued_jobs_changes_the_claim_order(open_ledger):
    ledger = open_ledger()
    for key, created_at in [("a", 1.0), ("b", 2.0), ("c", 3.0)]:
        ledger.enqueue(job(key, created_at))
    assert [j.priority for j in open_ledger().set_priority(["c"], 5)] == [5]
    first = ledger.claim_next("i1", now=4.0, lease_seconds=LEASE)
    assert first.key == "c"
    assert ledger.set_priority([first.id], 9) == []  # running: no longer in the queue
    ledger.set_priority(["a"], -1)
    assert [ledger.claim_next("i1", now=4.0, lease_seconds=LEASE).key for _ in range(2)] == ["b", "a"]

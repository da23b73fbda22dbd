"""Fencing: a holder's claim token must still be the job's for its renewals, and right before its renames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fakes import FakeClock
from vidrop.daemon.lease import LeaseKeeper, LeaseLost
from vidrop.daemon.ledger.base import Job
from vidrop.daemon.ledger.sqlite import SqliteLedger
from vidrop.daemon.outbox import TEMP_PREFIX, Outbox
from vidrop.pipeline.generate import GenerationResult, JobParams

LEASE = 10.0


@pytest.fixture
def ledger(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    ledger.enqueue(
        Job(
            id="j1",
            key="k1",
            input="shot.png",
            sidecar=None,
            input_sha256="a" * 64,
            sidecar_sha256=None,
            params={"prompt": "x"},
            seed=1,
            created_at=1.0,
        )
    )
    yield ledger
    ledger.close()


def test_a_holder_whose_claim_was_taken_over_cannot_confirm(ledger):
    clock = FakeClock()
    stalled = ledger.claim_next("a", clock.time(), LEASE)
    keeper = LeaseKeeper(ledger, instance_id="a", clock=clock, lease_seconds=LEASE, describe=lambda: "")
    keeper.hold(stalled.id, stalled.claims)
    keeper.confirm()  # still its own
    clock.now += LEASE + 1  # "a" stalls past its lease; "b" takes the job over
    assert ledger.claim_next("b", clock.time(), LEASE).claims == stalled.claims + 1
    with pytest.raises(LeaseLost):
        keeper.confirm()


def _result_and_params():
    frames = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    params = JobParams(
        prompt="x",
        negative_prompt="",
        width=32,
        height=32,
        num_frames=5,
        steps=1,
        guidance_scale=3.0,
        fps=8,
        format="mp4",
        seed=1,
    )
    return GenerationResult(frames=frames, facts={}), params


def test_the_outbox_renames_nothing_when_the_check_before_the_renames_fails(tmp_path):
    outbox = Outbox(tmp_path, owner="a")
    names = outbox.names_for("shot.png")
    result, params = _result_and_params()
    outbox.commit_success(names=names, result=result, params=params, manifest={"job_id": "j1", "by": "b"})
    taken_over = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def lost():
        raise LeaseLost("j1")

    with pytest.raises(LeaseLost):
        outbox.commit_success(
            names=names, result=result, params=params, manifest={"job_id": "j1", "by": "a"}, before_rename=lost
        )
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == taken_over
    assert json.loads(names.manifest.read_text())["by"] == "b"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(TEMP_PREFIX)]

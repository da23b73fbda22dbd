"""The STATUS= line: job N of M over a busy stretch, the step, and an ETA from the steps' pace."""

from vidrop.daemon.status import StatusLine


def test_a_busy_stretch_counts_jobs_and_estimates_the_running_one():
    line = StatusLine()
    assert line.idle(queued=0, settling=2) == "idle, 0 queued, 2 settling"
    line.job_started()
    line.job_started()
    line.job_started()  # third job of the stretch, nine more queued behind it
    assert (
        line.step(job_input="a/b/photo.png", step=1, total=50, queued=9, now=100.0)
        == "job 3 of 12: a/b/photo.png, step 1/50"
    )
    assert (
        line.step(job_input="a/b/photo.png", step=17, total=50, queued=9, now=119.4)
        == "job 3 of 12: a/b/photo.png, step 17/50, ETA 40 s"
    )
    assert line.idle(queued=9, settling=0) == "job 3 of 12 done, 9 queued"
    assert line.idle(queued=0, settling=0) == "idle, 0 queued"
    line.job_started()
    assert line.step(job_input="c.png", step=1, total=2, queued=0, now=200.0) == "job 1 of 1: c.png, step 1/2"

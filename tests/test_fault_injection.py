"""SIGKILL inside the critical windows of six commands, then the rerun (issue 11).

One trial per command, killed at its most critical fault point (copsctl.atomic's
COPSCTL_FAULT): a folder swapped in but the old one not yet deleted, a cost file
published but its ground truth not, a checkpoint written but not yet published. The
benchmark ``python -m copsctl.benchmarks.fault_injection --trials N`` runs many more,
at random moments too (figures in docs/no-data-loss.md).
"""

from __future__ import annotations

import random

from copsctl.benchmarks import fault_injection as fi


def test_one_kill_per_command_loses_nothing_and_resumes_bit_exactly(tmp_path):
    rows = fi.run(1, root=tmp_path)
    assert [r["command"] for r in rows] == list(fi.COMMANDS)
    for r in rows:
        assert (r["trials"], r["faults"], r["survived"], r["lost"]) == (1, 1, 1, 0), r


def test_a_lost_result_is_detected(tmp_path):
    # the checker itself: a rerun that gives another result than the reference, or a
    # user's file that disappeared, counts as lost
    shared = tmp_path / "shared"
    shared.mkdir()
    sc = fi.scenarios(shared)["make-costs"]
    fi.calibrate(sc, tmp_path, timed=False)
    wrong = fi.Scenario("make-costs", new=sc.new, outputs=sc.outputs, points=sc.points,
                        old=sc.old, reference=sc.reference, old_digests=sc.old_digests,
                        rerun=lambda w: ["make-costs", "--out", w / "c.h5", "--images", 3,
                                         "--seed", 5])
    r = fi.trial(wrong, tmp_path, 0, random.Random(0))
    assert r.killed and "differs from the reference" in r.lost
    deleting = fi.Scenario("make-costs", new=sc.new, outputs=sc.outputs, points=sc.points,
                           old=sc.old, reference=sc.reference, old_digests=sc.old_digests,
                           rerun=lambda w: ["make-costs", "--out", w / "user_notes.txt",
                                            "--gt-out", w / "c_gt", "--images", 3, "--seed", 2])
    r = fi.trial(deleting, tmp_path, 0, random.Random(0))
    assert r.killed and "the user's file beside the outputs was changed" in r.lost

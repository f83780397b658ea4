"""The overfit proof (tools/overfit.py): both stages fit one carphone clip, in both layouts.

A model that cannot fit one 8-frame 32^2 clip has a bug in its training code (wrong target
indices, a dropped loss term, a broken phase or EMA), whatever its validation numbers say.
About 2-3 minutes per layout on one CPU thread; docs/results.md ("Overfit proof") records runs
and a deliberate break that this test catches.
"""

from __future__ import annotations

import pytest

from tools.overfit import OverfitConfig, run_overfit


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["stcvq", "reference"])
def test_overfit_one_clip(tmp_path, layout):
    summary = run_overfit(OverfitConfig(layout=layout), tmp_path)
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert not failed, f"{layout}: {failed}; stage I {summary['stage1']}"
    # the phases are the schedule's: bfvr learns the noise-free draws first, de-flicker has one phase
    assert [p["name"] for p in summary["stage2"]["bfvr"]["phases"]] == ["noisefree", "full"]
    assert [p["name"] for p in summary["stage2"]["deflicker"]["phases"]] == ["full"]

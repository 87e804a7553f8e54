"""The ground-truth file: written before reports leave, read through GroundTruth, resumable."""

from __future__ import annotations

from pathlib import Path

import gridradio as F
import pytest
from gridradio import FrameDecoder
from gridsim.model import make_meters
from gridsim.module import RadioModule
from gridsim.truth import GroundTruth, TruthWriter

T0 = 1767571200
IV = 900


def test_truth_holds_every_record_reported(tmp_path: Path) -> None:
    """Every reported record is in the truth, and the API's views agree with each other."""
    path = tmp_path / "t.sqlite"
    writer = TruthWriter(path, resume=False)
    meters = make_meters(20, 4)
    writer.add_meters((m.params.meter_id, m.params.kind, int(m.energy)) for m in meters)
    writer.set_meta(seed=4, meters=20, start=T0, end=T0 + 4 * IV)
    module = RadioModule(meters, seed=4, start=T0, end=T0 + 4 * IV, truth=writer)
    reports = [
        f.record
        for f in FrameDecoder().feed(module.advance(T0 + 5 * IV))
        if isinstance(f, F.IntervalReport)
    ]
    with GroundTruth(path) as truth:
        assert truth.is_complete()
        assert truth.count() == 80 == len(reports)
        assert set(truth.records()) == set(reports)
        assert truth.keys() == {(r.meter_id, r.interval_end) for r in reports}
        assert len(list(truth.records(meters[0].params.meter_id))) == 4
        assert set(truth.meters().values()) <= {"household", "business"}
        energy = truth.energy_by_meter()
        first = meters[0].params.meter_id
        initial = next(iter(truth.records(first))).energy_wh
        assert energy[first] >= list(truth.records(first))[-1].energy_wh - initial
        assert all(v >= 0 for v in energy.values()) and sum(energy.values()) > 0
        assert truth.meta()["seed"] == 4
    writer.close()


def test_existing_truth_needs_resume(tmp_path: Path) -> None:
    """An existing truth file is never overwritten by accident."""
    path = tmp_path / "t.sqlite"
    TruthWriter(path, resume=False).set_meta(seed=1)
    with pytest.raises(FileExistsError, match="--resume"):
        TruthWriter(path, resume=False)
    assert TruthWriter(path, resume=True).resumed


def test_missing_truth_file_is_a_clear_error(tmp_path: Path) -> None:
    """Opening a truth file that does not exist says so."""
    with pytest.raises(FileNotFoundError, match="no ground-truth file"):
        GroundTruth(tmp_path / "nope.sqlite")

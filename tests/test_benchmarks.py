"""Every benchmark runs end to end in smoke mode (the tiny model, seconds), through the one entry
point ``python -m benchmarks``, so none of them can rot. The figures a smoke run prints are not
measurements: only that each item ran and wrote what it writes is checked here."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main

CASES = {  # sub-command -> (arguments, the files it writes, what its JSON holds)
    "run": (
        ["--smoke"],
        "*-smoke.json",
        (
            "throughput",
            "study_overhead",
            "pruning",
            "qlora_memory",
            "components",
            "attention",
            "profile",
            "scaling",
        ),
    ),
    "gpu": (
        ["--smoke"],
        "gpu.json",
        ("throughput_longtail", "throughput_dates", "profile", "qlora_memory", "study_overhead", "packing"),
    ),
    "throughput": (["--smoke"], "throughput-tiny-longtail.json", ("sides", "ratios")),
    "calibration": (
        ["--smoke"],
        "calibration-smoke.json",
        ("cells", "bootstrap", "family", "plan", "interference"),
    ),
    "sequential": (["--smoke"], "sequential-smoke.json", ("cells", "designs")),
    "pruning": (["--smoke"], "pruning-smoke.json", ("rows", "recordings")),
    "packing": (["--smoke"], "packing-smoke.json", ("rows", "equivalence")),
    "replication": (
        ["--smoke"],
        "replication-smoke.json",
        ("test_pass", "knockout_passes_all_items", "ratio"),
    ),
}


@pytest.mark.parametrize("command", list(CASES))
def test_every_benchmark_runs_in_smoke_mode(command, tmp_path, capsys):
    args, pattern, keys = CASES[command]
    out = (
        ["--out", str(tmp_path)]
        if command in ("calibration", "sequential", "pruning", "packing", "replication")
        else ["--out-dir", str(tmp_path)]
    )
    assert main([command, *args, *out]) == 0
    written = sorted(tmp_path.glob(pattern))
    assert len(written) == 1, sorted(p.name for p in tmp_path.iterdir())
    result = json.loads(written[0].read_text())
    assert set(keys) <= set(result), sorted(result)
    assert written[0].with_suffix(".md").read_text().strip()
    if command == "calibration":
        assert "Cells with 3+ seeds outside the bounds: **0**" in written[0].with_suffix(".md").read_text()
    if command == "run":  # pruning and study overhead read what the trials recorded (no patching)
        assert (
            result["pruning"]["percentile"]["search_steps"] > 0
            and result["pruning"]["median"]["search_steps"] > 0
        )
        assert result["study_overhead"]["trials"] >= 3


def test_study_time_reads_a_recorded_study(tmp_path, capsys):
    from tests.report_fixtures import write_study

    rec = write_study(tmp_path / "study", mlflow=False)
    assert main(["study-time", rec.storage, "100"]) == 0
    assert "complete trials, study wall 100 s" in capsys.readouterr().out


def test_the_entry_point_names_its_sub_commands(capsys):
    assert main([]) == 2 and "python -m benchmarks run" in capsys.readouterr().err

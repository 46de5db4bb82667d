"""``edge-sdfa bench --backend pipesdfa``."""
from __future__ import annotations

import json

import pytest

from edge_sdfa.cli import main

pytestmark = pytest.mark.integration


def test_bench_json(capsys):
    main(["bench", "--backend", "pipesdfa", "--workload", "nmnist-mlp2", "--batch", "32", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["workload"] == "nmnist-mlp2" and r["batch"] == 32
    for key in ("latency_s", "energy_j", "breakdown"):
        assert key in r["sdfa"] and key in r["pipelayer"]
    assert r["speedup"] > 1 and r["energy_ratio"] > 0 and "adc_less" in r and "wear" in r
    main(["bench", "--workload", "nmnist-mlp2", "--batch", "32", "--endurance", "1e9", "--json"])
    r9 = json.loads(capsys.readouterr().out)
    assert r9["wear"]["lifetime_updates"] == pytest.approx(1000 * r["wear"]["lifetime_updates"])


def test_bench_plot_and_text(tmp_path, capsys):
    out = tmp_path / "b.png"
    main(["bench", "--workload", "braille-mlpb", "--preset", "isaac", "--plot", str(out)])
    text = capsys.readouterr().out
    assert "speedup:" in text and out.exists() and out.stat().st_size > 1000


@pytest.mark.parametrize("args", [["--workload", "nope"], ["--workload", "shd-mlpb", "--preset", "nope"],
                                  ["--workload", "shd-mlpb", "--backend", "lava"],
                                  ["--workload", "shd-mlpb", "--batch", "0"],
                                  ["--workload", "bundle:/does/not/exist"],
                                  ["--workload", "shd-mlpb", "--endurance", "0"],
                                  ["--workload", "shd-mlpb", "--update-mode", "sideways"]])
def test_bench_user_errors(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_bench_json_has_area_layers_and_schedule(capsys):
    main(["bench", "--workload", "braille-mlpb", "--json"])
    r = json.loads(capsys.readouterr().out)
    for side in ("sdfa", "pipelayer"):
        assert r[side]["area_mm2"]["total"] > 0 and r[side]["leakage_w"] > 0 and r[side]["tops_per_w"] > 0
    assert [row["layer"] for row in r["layers"]] == [m["layer"] for m in r["mapping"]]
    assert {"latency_s", "energy_j", "area_mm2"} <= set(r["layers"][0]["sdfa"])
    assert r["schedule"]["sdfa"]["ratio"] == pytest.approx(1.0, abs=0.02)


def test_bench_sweep_grid_csv_and_json(tmp_path, capsys):
    out = tmp_path / "grid.csv"
    main(["bench", "--workload", "braille-mlpb", "--sweep", "write.parallel_arrays=8,64",
          "--sweep", "activity.spike_rate=0.05,0.2", "--csv", str(out), "--json"])
    r = json.loads(capsys.readouterr().out)
    rows = r["rows"]
    assert [(x["write.parallel_arrays"], x["activity.spike_rate"]) for x in rows] == [
        (8.0, 0.05), (8.0, 0.2), (64.0, 0.05), (64.0, 0.2)]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("write.parallel_arrays,activity.spike_rate,speedup") and len(lines) == 5
    # more write engines can only shorten the update, for both designs
    assert rows[2]["sdfa_latency_s"] <= rows[0]["sdfa_latency_s"]
    assert rows[2]["pipelayer_latency_s"] <= rows[0]["pipelayer_latency_s"]


@pytest.mark.parametrize("args", [["--sweep", "write.nope=1"], ["--sweep", "write.parallel_arrays"],
                                  ["--sweep", "write.parallel_arrays=a,b"], ["--csv", "x.csv"],
                                  ["--sweep", "batch=1", "--csv", "/does/not/exist/x.csv"],
                                  ["--raw", "sometimes"]])
def test_bench_sweep_user_errors(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--workload", "braille-mlpb", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err

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

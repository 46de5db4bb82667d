"""The real agent (``edge-sdfa serve`` in a subprocess) and the real host client over a pty pair:
deploy, remote fine-tune with telemetry, commit, revert; rejection of damaged, unsigned,
downgraded or escaping bundles with the active slot byte-identical (G1, G7); the CLI."""
from __future__ import annotations

import io
import json
import random
import shutil
import tarfile

import pytest

from bridge_fixtures import (SLOW_LINK, AgentProcess, cli, make_bundle, make_store, make_user_data,
                             tree_bytes)
from edge_sdfa.store import Store
from firmware_bridge.client import (RemoteError, commit, connect, deploy, evaluate, finetune,
                                    get_weights, revert, status, upload)
from firmware_bridge.packing import pack_bundle
from firmware_bridge.signing import new_keypair

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Keys, bundles v1 (factory), v2, v3, and a user batch."""
    d = tmp_path_factory.mktemp("bridge-world")
    key, pub = new_keypair(d / "owner")
    other_key, _ = new_keypair(d / "intruder")
    return {"dir": d, "key": key, "pub": pub, "other_key": other_key,
            "v1": make_bundle(d / "v1", version=1, seed=0), "v2": make_bundle(d / "v2", version=2, seed=1),
            "v3": make_bundle(d / "v3", version=3, seed=2), "data": make_user_data(d / "user.npz")}


def test_serve_refuses_to_start_without_trust_or_insecure(tmp_path):
    r = cli("serve", "--port", "loop://", "--store", str(tmp_path / "store"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: refusing to serve without --trust")


def test_insecure_agent_says_so(tmp_path, world):
    make_store(tmp_path / "store", world["v1"])
    with AgentProcess(tmp_path / "store", ["--insecure"]) as agent:
        with connect(agent.url, config=SLOW_LINK) as dev:
            assert dev.info["insecure"] is True and dev.info["trusted_key"] is None
            assert dev.info["active"] == {"model_id": "bridge-test", "version": 1, "revision": 0}
        assert "INSECURE" in agent.log_text()


def test_deploy_finetune_commit_revert(tmp_path, world):
    store = make_store(tmp_path / "store", world["v1"])
    with AgentProcess(tmp_path / "store", ["--trust", str(world["pub"])]) as agent:
        with connect(agent.url, config=SLOW_LINK) as dev:
            assert dev.info["insecure"] is False and dev.info["protocol"] == 1
            r = deploy(dev, world["v2"], sign=world["key"])
            assert (r["installed"], r["version"], r["signature_checked"]) == ("candidate", 2, True)
            assert status(dev)["has_candidate"] is True
            assert commit(dev)["active"]["version"] == 2
            events = []
            report = finetune(dev, f"npz:{world['data']}", config={"epochs": 2, "batch_size": 4},
                              on_event=events.append)
            epochs = [e for e in events if e.get("event") == "epoch"]
            assert [e["epoch"] for e in epochs] == [1, 2]
            for e in epochs:
                assert {"loss", "accuracy", "seconds_per_update", "saturation"} <= set(e)
            assert {"committed", "accuracy_before", "accuracy_after", "updates"} <= set(report)
            st = status(dev)
            assert st["user_data"] is True and st["job"]["state"] == "done"
            ev = evaluate(dev)                       # data already on the device
            assert 0.0 <= ev["accuracy"] <= 1.0 and ev["version"] == 2
            w = get_weights(dev, tmp_path / "head.npz")
            assert (tmp_path / "head.npz").read_bytes() == (store.active_dir() / "head.npz").read_bytes()
            assert w["size"] > 0
            before = st["active"]
            out = revert(dev)
            if report["committed"]:                  # back to v2 as deployed
                assert out["action"] == "revert" and out["active"]["revision"] == 0
            else:
                assert out["active"] == before or out["action"] == "revert"
            with pytest.raises(RemoteError):         # nothing left to commit
                commit(dev)


def _flip_positions(data: bytes, rng: random.Random) -> list[int]:
    """At least one bit in every 512-byte block (tar headers, file data, padding, end blocks),
    plus every byte of the first header's name, size and checksum fields."""
    pos = [b + rng.randrange(min(512, len(data) - b)) for b in range(0, len(data), 512)]
    pos += list(range(0, 8)) + list(range(124, 136)) + list(range(148, 156))
    return sorted(set(pos))


def _assert_rejected(dev, blob: bytes, active_before: dict, store_dir) -> str:
    with pytest.raises(RemoteError) as exc:
        upload(dev, blob, "bundle")
    assert tree_bytes(Store(store_dir).active_dir()) == active_before
    return exc.value.code


def test_damaged_unsigned_downgraded_or_escaping_bundles_are_rejected(tmp_path, world):
    store = make_store(tmp_path / "store", world["v1"])
    root = tmp_path / "store"
    with AgentProcess(root, ["--trust", str(world["pub"])]) as agent:
        with connect(agent.url, config=SLOW_LINK) as dev:
            deploy(dev, world["v2"], sign=world["key"])
            commit(dev)
            active = tree_bytes(Store(root).active_dir())
            state = status(dev)["active"]
            good = pack_bundle(world["v3"], sign_key=world["key"])
            rng = random.Random(6)
            codes = set()
            for p in _flip_positions(good, rng):
                bad = bytearray(good)
                bad[p] ^= 1 << rng.randrange(8)
                codes.add(_assert_rejected(dev, bytes(bad), active, root))
            # unsigned, signed by another key, downgrade, incompatible ABI
            _assert_rejected(dev, pack_bundle(world["v3"]), active, root)
            _assert_rejected(dev, pack_bundle(world["v3"], sign_key=world["other_key"]), active, root)
            _assert_rejected(dev, pack_bundle(world["v1"], sign_key=world["key"]), active, root)
            abi = tmp_path / "abi"
            shutil.copytree(world["v3"], abi)
            m = json.loads((abi / "manifest.json").read_text())
            m["runtime_abi"] = 99
            (abi / "manifest.json").write_text(json.dumps(m))
            _assert_rejected(dev, pack_bundle(abi, sign_key=world["key"], check=False), active, root)
            # archive members that escape the folder: '..', absolute, symlink
            files = {"manifest.json": b"{}"}
            for name, kind in (("../evil", tarfile.REGTYPE), ("/tmp/evil", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w") as tf:
                    info = tarfile.TarInfo(name)
                    info.type = kind
                    info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
                    tf.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
                    for n, b in files.items():
                        ti = tarfile.TarInfo(n)
                        ti.size = len(b)
                        tf.addfile(ti, io.BytesIO(b))
                _assert_rejected(dev, buf.getvalue(), active, root)
            assert not (tmp_path / "evil").exists()
            assert status(dev)["active"] == state and status(dev)["has_candidate"] is False
            # and the good one still goes through afterwards
            assert deploy(dev, world["v3"], sign=world["key"])["version"] == 3
    assert "bundle" in codes


def test_cli_deploy_remote_and_monitor(tmp_path, world):
    make_store(tmp_path / "store", world["v1"])
    keys = cli("keys", "new", str(tmp_path / "me"), "--json")
    assert keys.returncode == 0, keys.stderr
    paths = json.loads(keys.stdout)
    assert (tmp_path / "me.key").stat().st_mode & 0o077 == 0
    again = cli("keys", "new", str(tmp_path / "me"))
    assert again.returncode == 2 and "not overwriting" in again.stderr
    with AgentProcess(tmp_path / "store", ["--trust", paths["public_key"]]) as agent:
        r = cli("deploy", str(world["v2"]), "--port", agent.url, "--sign", paths["private_key"], "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["version"] == 2
        r = cli("deploy", str(world["v3"]), "--port", agent.url, "--json")      # unsigned: refused
        assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: device refused (bundle)")
        assert json.loads(cli("remote", "commit", "--port", agent.url, "--json").stdout)["active"]["version"] == 2
        r = cli("remote", "finetune", "--port", agent.url, "--data", f"npz:{world['data']}", "--epochs", "2", "--json")
        assert r.returncode == 0, r.stderr
        assert "epoch 2/2" in r.stderr and "committed" in json.loads(r.stdout)
        log = tmp_path / "mon.jsonl"
        r = cli("monitor", "--port", agent.url, "--duration", "1", "--json", "--log", str(log))
        assert r.returncode == 0, r.stderr
        r = cli("remote", "status", "--port", agent.url, "--json")
        st = json.loads(r.stdout)
        assert st["device"]["protocol"] == 1 and st["active"]["version"] == 2
        r = cli("remote", "eval", "--port", agent.url, "--json")
        assert r.returncode == 0 and "holdout" in json.loads(r.stdout)
    r = cli("devices", "--json")
    assert r.returncode == 0 and "devices" in json.loads(r.stdout)


def test_monitor_follows_a_job_started_by_another_connection(tmp_path, world):
    import io as _io

    from firmware_bridge.messages import MsgType
    from firmware_bridge.monitor import monitor

    make_store(tmp_path / "store", world["v1"])
    with AgentProcess(tmp_path / "store", ["--insecure"]) as agent:
        with connect(agent.url, config=SLOW_LINK) as dev:   # start a job and leave
            upload(dev, (world["data"]).read_bytes(), "data")
            job = dev.request(MsgType.FINETUNE, {"data": None, "config": {"epochs": 3}}).meta["job"]
        out = _io.StringIO()
        log = tmp_path / "events.jsonl"
        n = monitor(agent.url, log=str(log), as_json=True, out=out, since=0, duration=60,
                    stop_when=lambda ev: ev.get("event") in ("done", "failed"))
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        assert n == len(events) == len(log.read_text().splitlines())
        assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
        assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
        assert all(e["job"] == job for e in events)

"""The real agent (``edge-sdfa serve`` in a subprocess) and the real host client over a pty pair:
deploy (also of a new model to a fresh device), remote fine-tune with telemetry, commit, revert,
reset; every attack of issue 13 refused with the active slot byte-identical (G1, G7); the CLI."""
from __future__ import annotations

import json
import random
import shutil

import pytest

from bridge_fixtures import (SLOW_LINK, AgentProcess, cli, make_bundle, make_store, make_user_data,
                             tree_bytes)
from firmware_bridge.auth import sign_request
from firmware_bridge.client import (LinkConfig, RemoteError, commit, connect, deploy, evaluate, finetune,
                                    get_weights, job, predict, reset, revert, status, upload)
from firmware_bridge.faults import Faults
from firmware_bridge.messages import Message, MsgType, encode_message
from firmware_bridge.packing import pack_bundle
from firmware_bridge.signing import new_keypair

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Keys, bundles v1 (factory), v2, v3, another model, and a user batch."""
    d = tmp_path_factory.mktemp("bridge-world")
    key, pub = new_keypair(d / "owner")
    other_key, _ = new_keypair(d / "intruder")
    return {"dir": d, "key": key, "pub": pub, "other_key": other_key,
            "v1": make_bundle(d / "v1", version=1, seed=0), "v2": make_bundle(d / "v2", version=2, seed=1),
            "v3": make_bundle(d / "v3", version=3, seed=2),
            "other": make_bundle(d / "other", version=1, seed=7, model_id="someone-elses-model"),
            "data": make_user_data(d / "user.npz")}


def active_bytes(root) -> dict[str, bytes]:
    from edge_sdfa.store import Store

    return tree_bytes(Store(root).active_dir())


def test_serve_refuses_to_start_without_trust_or_insecure(tmp_path):
    r = cli("serve", "--port", "loop://", "--store", str(tmp_path / "store"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: refusing to serve without --trust")


def test_insecure_agent_says_so(tmp_path, world):
    make_store(tmp_path / "store", world["v1"])
    with AgentProcess(tmp_path / "store", ["--insecure"]) as agent:
        with connect(agent.url, config=SLOW_LINK) as dev:
            assert dev.info["insecure"] is True and dev.info["trusted_key"] is None
            assert dev.info["nonce"] is None and dev.info["auth_required"] == []
            assert dev.info["active"] == {"model_id": "bridge-test", "version": 1, "revision": 0}
            assert status(dev)["has_candidate"] is False
        assert "INSECURE" in agent.log_text()


def test_deploy_finetune_commit_revert_reset(tmp_path, world):
    from edge_sdfa.store import Store

    make_store(tmp_path / "store", world["v1"])
    with AgentProcess(tmp_path / "store", ["--trust", str(world["pub"])]) as agent:
        with connect(agent.url, config=SLOW_LINK, sign=world["key"]) as dev:
            assert dev.info["insecure"] is False and dev.info["protocol"] == 3 and len(dev.info["nonce"]) == 32
            r = deploy(dev, world["v2"], sign=world["key"])
            assert (r["installed"], r["version"], r["signature_checked"]) == ("candidate", 2, True)
            assert status(dev)["has_candidate"] is True
            assert commit(dev)["active"]["version"] == 2
            events = []
            report = finetune(dev, f"npz:{world['data']}", config={"epochs": 2, "batch_size": 4},
                              on_event=events.append)
            epochs = [e for e in events if e.get("event") == "epoch"]
            assert [e["epoch"] for e in epochs] == [1, 2]
            assert {"committed", "accuracy_before", "accuracy_after", "updates"} <= set(report)
            st = status(dev)
            assert st["job"]["state"] == "done"
            assert job(dev, st["job"]["job"])["report"] == report     # the outcome, by job id
            assert "events" not in st and "user_data" not in st and "uploads" in st
            ev = evaluate(dev)                       # data already on the device
            assert 0.0 <= ev["accuracy"] <= 1.0 and ev["version"] == 2
            pred = predict(dev, data="latest", limit=5)
            assert pred["samples"] == 5 and len(pred["labels"]) == 5 and len(pred["rates"][0]) == 4
            get_weights(dev, tmp_path / "head.npz")
            assert (tmp_path / "head.npz").read_bytes() == (Store(tmp_path / "store").active_dir() / "head.npz").read_bytes()
            out = revert(dev)
            if report["committed"]:                  # back to v2 as deployed
                assert out["action"] == "revert" and out["active"]["revision"] == 0
            with pytest.raises(RemoteError):         # nothing left to commit
                commit(dev)
            out = reset(dev)
            assert out["action"] == "reset" and out["active"]["version"] == 1
            with pytest.raises(RemoteError) as exc:  # the user's data went with the weights
                dev.request(MsgType.EVAL, {"data": "latest"})
            assert exc.value.code == "no_data"


def test_new_model_on_a_fresh_device(tmp_path, world):
    """An empty store starts with the embedded model; a bundle of any other model id goes in only
    with new_model; the old model stays active until commit; revert goes back to it; reset to the
    factory (embedded) model."""
    root = tmp_path / "fresh-store"
    with AgentProcess(root, ["--trust", str(world["pub"])]) as agent:
        with connect(agent.url, config=SLOW_LINK, sign=world["key"]) as dev:
            embedded = dev.info["active"]
            assert embedded["model_id"] != "someone-elses-model"
            with pytest.raises(RemoteError) as exc:
                deploy(dev, world["other"], sign=world["key"])
            assert exc.value.code == "bundle" and "--new-model" in str(exc.value)
            r = deploy(dev, world["other"], sign=world["key"], new_model=True)
            assert r["new_model"] is True and r["model_id"] == "someone-elses-model"
            assert status(dev)["active"] == embedded          # not active before commit
            assert commit(dev)["active"]["model_id"] == "someone-elses-model"
            ft = finetune(dev, f"npz:{world['data']}", config={"epochs": 1, "batch_size": 4})
            assert ft["model_id"] == "someone-elses-model"
            assert revert(dev)["active"]["model_id"] in ("someone-elses-model", embedded["model_id"])
            assert reset(dev)["active"] == embedded
    assert "creating one from the embedded default bundle" in agent.log_text()


def _send_raw(dev, msg: Message) -> Message:
    dev.channel.send(encode_message(msg))
    return dev._await(msg.seq, 60.0)


def _payload_upload(dev, packed, wire: bytes, need: list[str], raw_size: int):
    import hashlib

    sha = hashlib.sha256(wire).hexdigest()
    announce = {"kind": "bundle", "manifest": packed.manifest, "new_model": False, "files_sent": need,
                "sha": sha, "size": len(wire), "raw_size": raw_size, "codec": "none"}
    from firmware_bridge.client import _send_payload

    _send_payload(dev, announce, wire, None)
    return dev.request(MsgType.PUT_END, {"sha": sha}, patience=120)


def test_every_attack_is_refused_with_the_active_slot_byte_identical(tmp_path, world):
    root = tmp_path / "store"
    make_store(root, world["v1"])
    with AgentProcess(root, ["--trust", str(world["pub"])]) as agent:
        with connect(agent.url, config=SLOW_LINK, sign=world["key"]) as dev:
            deploy(dev, world["v3"], sign=world["key"])
            commit(dev)
            upload(dev, world["data"].read_bytes(), "data")
            active, state = active_bytes(root), status(dev)["active"]
        staging = root / "bridge" / "staging"

        def unchanged():
            assert active_bytes(root) == active
            assert not list(staging.glob("*.part")), "nothing may be staged by a refused request"

        # 1. unsigned requests: a host without the key (COMMIT, REVERT, FINETUNE, RESET, EVAL, ...)
        with connect(agent.url, config=SLOW_LINK) as intruder:
            for mtype, meta in ((MsgType.REVERT, {}), (MsgType.COMMIT, {}), (MsgType.RESET, {}),
                                (MsgType.FINETUNE, {"data": None}), (MsgType.EVAL, {}),
                                (MsgType.GET_WEIGHTS, {"offset": 0}), (MsgType.PREDICT, {}),
                                (MsgType.PUT_BUNDLE, {"kind": "data", "sha": "a" * 64, "size": 10})):
                with pytest.raises(RemoteError) as exc:
                    intruder.request(mtype, meta)
                assert exc.value.code == "unauthorized", mtype
            # a captured older (validly signed) bundle, sent by someone without the key
            with pytest.raises(RemoteError) as exc:
                deploy(intruder, pack_bundle(world["v2"], sign_key=world["key"]))
            assert exc.value.code == "unauthorized"
            # STATUS stays open, and reveals no user data
            st = status(intruder)
            assert st["active"] == state and "events" not in st and "user_data" not in st
        unchanged()
        with connect(agent.url, config=SLOW_LINK, sign=world["key"]) as dev:
            # 2. replayed and reordered signed requests
            signed = sign_request(Message(MsgType.EVAL, 424242, {"data": None}), dev.key,
                                  bytes.fromhex(dev.info["nonce"]), 10_000)
            assert _send_raw(dev, signed).type == MsgType.OK      # valid once
            dev.ctr = 10_000
            for again in (Message(MsgType.EVAL, 424244, signed.meta), Message(MsgType.REVERT, 424243, signed.meta)):
                with pytest.raises(RemoteError) as exc:
                    _send_raw(dev, again)              # the same counter twice / fields under another type
                assert exc.value.code == "unauthorized"
            old_ft = sign_request(Message(MsgType.FINETUNE, 515151, {"data": None}), dev.key,
                                  bytes.fromhex(dev.info["nonce"]), 9_000)
            with pytest.raises(RemoteError) as exc:    # an older counter: reordered
                _send_raw(dev, old_ft)
            assert exc.value.code == "unauthorized"
            fresh_ft = sign_request(Message(MsgType.FINETUNE, 515152, {"data": None}), dev.key,
                                    bytes.fromhex(dev.info["nonce"]), 20_000)
            dev.ctr = 20_000
        with connect(agent.url, config=SLOW_LINK, sign=world["key"]) as dev:   # a new session: new nonce
            with pytest.raises(RemoteError) as exc:
                _send_raw(dev, fresh_ft)               # captured in the last session: stale
            assert exc.value.code == "unauthorized"
            unchanged()
            # 3. path traversal: names, never paths; absent and not allowed look the same
            for name in ("../../../../tmp/x", "/etc/passwd", "a/b", "..", "nosuchdata"):
                with pytest.raises(RemoteError) as exc:
                    dev.request(MsgType.EVAL, {"data": name})
                assert exc.value.code == "no_data"
                assert str(exc.value) == f"device refused (no_data): no user data named {name!r} on the device"
            # 4. bundles: unsigned, foreign key, downgrade, damaged in flight
            for bad in (pack_bundle(world["v3"]), pack_bundle(world["v3"], sign_key=world["other_key"]),
                        pack_bundle(world["v2"], sign_key=world["key"]), pack_bundle(world["v1"], sign_key=world["key"])):
                with pytest.raises(RemoteError) as exc:
                    deploy(dev, bad)
                assert exc.value.code == "bundle"
                unchanged()
            v4 = make_bundle(tmp_path / "v4", version=4, seed=9)
            good = pack_bundle(v4, sign_key=world["key"])
            need = sorted(good.files)
            raw = good.payload(need)
            rng = random.Random(6)
            for pos in sorted({rng.randrange(len(raw)) for _ in range(12)} | {0, len(raw) - 1}):
                bad = bytearray(raw)
                bad[pos] ^= 1 << rng.randrange(8)
                with pytest.raises(RemoteError) as exc:
                    _payload_upload(dev, good, bytes(bad), need, len(raw))
                assert exc.value.code == "bundle", pos
                unchanged()
            # a manifest naming a file outside the bundle folder
            evil = json.loads(json.dumps(good.manifest))
            evil["files"]["../evil"] = evil["files"].pop("holdout.npz")
            with pytest.raises(RemoteError) as exc:
                dev.request(MsgType.PUT_BUNDLE, {"kind": "bundle", "manifest": evil})
            assert exc.value.code == "bundle"
            # 5. oversized uploads: announced too large, or chunks past the declared size
            with pytest.raises(RemoteError) as exc:
                dev.request(MsgType.PUT_BUNDLE, {"kind": "data", "sha": "b" * 64, "size": 1 << 40})
            assert exc.value.code == "too_large"
            from firmware_bridge.messages import chunk_blob

            dev.request(MsgType.PUT_BUNDLE, {"kind": "data", "sha": "c" * 64, "size": 100})
            with pytest.raises(RemoteError) as exc:
                dev.request(MsgType.PUT_CHUNK, blob=chunk_blob("c" * 64, 0, b"x" * 101))
            assert exc.value.code == "too_large"
            shutil.rmtree(staging)                      # (that partial upload was allowed: signed)
            staging.mkdir()
            unchanged()
            assert not (tmp_path / "evil").exists()
            # and the good one still goes through afterwards, sending only what the device lacks
            r = deploy(dev, good)
            assert r["version"] == 4


def test_redeploying_a_finetuned_head_sends_only_the_head(tmp_path, world):
    from edge_sdfa.bundle import read_bundle, with_head

    make_store(tmp_path / "store", world["v1"])
    from edge_sdfa.int8.net import QLayer

    b2 = read_bundle(world["v2"])
    head = [QLayer(l.exp, l.w8, l.bias, l.master) for l in b2.head()]
    head[-1] = QLayer(head[-1].exp, -head[-1].w8, head[-1].bias, -head[-1].master)   # "fine-tuned"
    tuned = with_head(b2, head, tmp_path / "v2r1", revision=1)
    with AgentProcess(tmp_path / "store", ["--insecure"]) as agent:
        with connect(agent.url, config=SLOW_LINK) as dev:
            full = deploy(dev, world["v2"])
            commit(dev)
            again = deploy(dev, tuned)
            assert again["files_sent"] == ["head.npz"] and set(again["files_skipped"]) >= {"holdout.npz"}
            assert again["bytes_sent"] < full["bytes_sent"]
            assert commit(dev)["active"]["revision"] == 1


def test_remote_finetune_at_5_percent_noise_reports_the_committed_outcome(tmp_path, world):
    from edge_sdfa.store import Store

    root = tmp_path / "store"
    make_store(root, world["v1"])
    agent = AgentProcess(root, ["--insecure"], faults=Faults.noise(0.05))
    with agent:
        with connect(agent.url, config=LinkConfig(give_up_after=30.0)) as dev:
            report = finetune(dev, f"npz:{world['data']}", config={"epochs": 2, "batch_size": 4, "lr": 2.0})
    st = Store(root).status()
    assert report["committed"] == (st["active"]["revision"] == 1)
    assert report["revision"] == st["active"]["revision"] if report["committed"] else True


def test_cli_deploy_remote_monitor_and_port_lock(tmp_path, world):
    make_store(tmp_path / "store", world["v1"])
    keys = cli("keys", "new", str(tmp_path / "me"), "--json")
    assert keys.returncode == 0, keys.stderr
    paths = json.loads(keys.stdout)
    assert (tmp_path / "me.key").stat().st_mode & 0o077 == 0
    with AgentProcess(tmp_path / "store", ["--trust", paths["public_key"]]) as agent:
        key = ["--sign", paths["private_key"]]
        r = cli("deploy", str(world["v2"]), "--port", agent.url, *key, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["version"] == 2
        # the agent is serving (it answered): a second one on its port refuses with one line
        second = cli("serve", "--port", agent.device_pty.path, "--store", str(tmp_path / "store2"),
                     "--trust", paths["public_key"], timeout=30)
        assert second.returncode == 2 and second.stderr.strip().count("\n") == 0
        assert "in use by another process" in second.stderr and not (tmp_path / "store2").exists()
        r = cli("deploy", str(world["v3"]), "--port", agent.url, "--json")      # unsigned: refused
        assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: device refused (unauthorized)")
        r = cli("remote", "commit", "--port", agent.url, "--json")              # unsigned: refused
        assert r.returncode == 2 and "unauthorized" in r.stderr
        assert json.loads(cli("remote", "commit", "--port", agent.url, *key, "--json").stdout)["active"]["version"] == 2
        r = cli("remote", "finetune", "--port", agent.url, "--data", f"npz:{world['data']}", "--epochs", "2",
                *key, "--json")
        assert r.returncode == 0, r.stderr
        assert "epoch 2/2" in r.stderr and "committed" in json.loads(r.stdout)
        log = tmp_path / "mon.jsonl"
        r = cli("monitor", "--port", agent.url, "--json", "--log", str(log))     # replays, exits: no job runs
        assert r.returncode == 0, r.stderr
        replayed = [json.loads(line) for line in r.stdout.splitlines()]
        assert replayed and replayed[-1]["event"] == "done"
        r = cli("remote", "status", "--port", agent.url, "--json")
        st = json.loads(r.stdout)
        assert st["device"]["protocol"] == 3 and st["active"]["version"] == 2
        r = cli("remote", "eval", "--port", agent.url, *key, "--json")
        assert r.returncode == 0 and "holdout" in json.loads(r.stdout)
    r = cli("devices", "--json")
    assert r.returncode == 0 and "devices" in json.loads(r.stdout)


def test_monitor_beside_a_running_remote_finetune(tmp_path, world):
    import subprocess
    import time

    from bridge_fixtures import CLI, REPO, agent_env

    from firmware_bridge.monitor import mirror_path

    make_store(tmp_path / "store", world["v1"])
    with AgentProcess(tmp_path / "store", ["--insecure"]) as agent:
        mirror_path(agent.url).unlink(missing_ok=True)     # a pty path is reused: no stale mirror
        ft = subprocess.Popen([*CLI, "remote", "finetune", "--port", agent.url, "--data", f"npz:{world['data']}",
                               "--epochs", "12", "--json"], env=agent_env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (mirror_path(agent.url).exists()
                                                       and mirror_path(agent.url).read_text()):
                time.sleep(0.1)
            mon = cli("monitor", "--port", agent.url, "--json", timeout=120)
            out, err = ft.communicate(timeout=120)
        finally:
            ft.kill()
        assert ft.returncode == 0, err
        assert mon.returncode == 0, mon.stderr
        events = [json.loads(line) for line in mon.stdout.splitlines()]
        assert events[-1]["event"] == "done"                       # exits when the job ends
        assert events[-1]["report"]["committed"] == json.loads(out)["committed"]


def test_monitor_follows_a_job_started_by_another_connection(tmp_path, world):
    import io as _io

    from firmware_bridge.monitor import monitor

    make_store(tmp_path / "store", world["v1"])
    with AgentProcess(tmp_path / "store", ["--insecure"]) as agent:
        with connect(agent.url, config=SLOW_LINK) as dev:   # start a job and leave
            name = upload(dev, (world["data"]).read_bytes(), "data")["data"]
            job_id = dev.request(MsgType.FINETUNE, {"data": name, "config": {"epochs": 3}}).meta["job"]
        out = _io.StringIO()
        log = tmp_path / "events.jsonl"
        n = monitor(agent.url, log=str(log), as_json=True, out=out, duration=60)
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        assert n == len(events) == len(log.read_text().splitlines())
        assert events[0]["event"] == "start" and events[-1]["event"] == "done"   # replayed, then followed
        assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
        assert all(e["job"] == job_id for e in events)

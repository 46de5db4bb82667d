"""Golden NIR files written by the frameworks' own exporters, with each framework's own spikes.

Run by hand in the frameworks' venv (see README.md in this folder), from the repository root:

    /work/nirgold/venv/bin/python tools/nir_golden/make_goldens.py [--only snntorch,norse,...]

For every framework x neuron flavour x architecture it writes tests/golden/nir/<fw>_<flavour>_<arch>/:
``model.nir`` (the framework's ``export``), ``input.npz`` (``x`` [T, N, *in_shape], 0/1 spikes),
``spikes.npz`` (``spikes`` [T, N, out]: the framework's own simulation of its own network on ``x``)
and ``info.json`` (framework, version, flavour, parameters, what the exporter was called with).
Everything is seeded; the networks are small (a few hundred weights) so the files stay small.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "nir"
T, N = 10, 4
MLP_IN, MLP_HID, MLP_OUT = 24, 16, 6
CONV_IN = (2, 8, 8)          # conv 3x3 (pad 1) 2->4 ch -> LIF -> avg pool 2 -> flatten (64) -> dense 6 -> LIF
CONV_CH, CONV_OUT = 4, 6


def _inputs(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.random((T, N, *shape)) < 0.35).astype(np.float32)


def _init(module, seed, gain=2.0):
    """Deterministic weights with enough drive to spike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = int(np.prod(m.weight.shape[1:]))
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 0.85) * gain / np.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)


def _save(name, graph_or_path, x, spikes, info, nir_mod):
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if isinstance(graph_or_path, (str, Path)):
        shutil.copy(graph_or_path, d / "model.nir")
    else:
        nir_mod.write(str(d / "model.nir"), graph_or_path)
    np.savez_compressed(d / "input.npz", x=x.astype(np.uint8))
    sp = np.asarray(spikes, np.float32)
    if np.all(sp == np.round(sp)) and sp.min() >= 0 and sp.max() < 256:
        sp = sp.astype(np.uint8)
    np.savez_compressed(d / "spikes.npz", spikes=sp)
    info = dict({"run_flags": []}, **info, T=T, N=N, total_spikes=float(sp.sum()), spike_rate=float(sp.mean()))
    (d / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=str) + "\n")
    print(f"{name}: {d} rate {sp.mean():.3f}")


# ---------------------------------------------------------------------------------------------
# SpikingJelly 2.0.0: LIFNode (hard reset, decay_input True/False, tau 3), IFNode


def spikingjelly():
    import nir
    import spikingjelly
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    flavours = {
        "lif": lambda: neuron.LIFNode(tau=3.0, decay_input=True, v_reset=0.0),
        "lif-nodecay": lambda: neuron.LIFNode(tau=3.0, decay_input=False, v_reset=0.0),
        "if": lambda: neuron.IFNode(v_reset=0.0),
    }
    for fl, mk in flavours.items():
        for arch in ("mlp", "conv"):
            torch.manual_seed(0)
            if arch == "mlp":
                net = torch.nn.Sequential(layer.Linear(MLP_IN, MLP_HID), mk(), layer.Linear(MLP_HID, MLP_OUT), mk())
                x = _inputs((MLP_IN,), 1)
            else:
                net = torch.nn.Sequential(layer.Conv2d(CONV_IN[0], CONV_CH, 3, padding=1), mk(), layer.AvgPool2d(2),
                                          layer.Flatten(), layer.Linear(CONV_CH * 16, CONV_OUT), mk())
                x = _inputs(CONV_IN, 2)
            _init(net, 10, gain=1.5 if fl != "lif" else 4.0)
            functional.reset_net(net)
            with torch.no_grad():
                out = [net(torch.from_numpy(x[t])).numpy() for t in range(T)]
            functional.reset_net(net)
            graph = export_to_nir(net, torch.from_numpy(x[0]), dt=1e-4)
            _save(f"spikingjelly_{fl}_{arch}", graph, x, np.stack(out),
                  {"framework": "spikingjelly", "version": spikingjelly.__version__ if hasattr(spikingjelly, "__version__")
                   else "2.0.0", "flavour": fl, "arch": arch, "export": "export_to_nir(net, x[0], dt=1e-4)",
                   "neuron": repr(net[1])}, nir)


# ---------------------------------------------------------------------------------------------
# snnTorch 1.0.0: Leaky(reset_mechanism="zero") and the default Leaky (subtract, reset_delay=True)


def snntorch():
    import nir
    import snntorch as snn
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    # NIR 1.0 cannot say which reset a Leaky had: the default (subtract, one step late) is what an
    # snnTorch graph runs with; reset "zero" needs the user's --reset hard (run_flags)
    flavours = {"leaky-zero": (dict(reset_mechanism="zero"), ["--reset", "hard"]), "leaky": (dict(), [])}
    for fl, (kw, run_flags) in flavours.items():
        for arch in ("mlp", "conv"):
            torch.manual_seed(0)
            n_hid = MLP_HID if arch == "mlp" else (CONV_CH, 8, 8)
            n_out = MLP_OUT if arch == "mlp" else CONV_OUT
            beta = lambda n: torch.full((n,) if isinstance(n, int) else n, 0.75)  # per-neuron: export needs tensors
            thr = lambda n: torch.ones((n,) if isinstance(n, int) else n)
            if arch == "mlp":
                net = torch.nn.Sequential(torch.nn.Linear(MLP_IN, MLP_HID),
                                          snn.Leaky(beta=beta(n_hid), threshold=thr(n_hid), init_hidden=True, **kw),
                                          torch.nn.Linear(MLP_HID, MLP_OUT),
                                          snn.Leaky(beta=beta(n_out), threshold=thr(n_out), init_hidden=True, **kw))
                x = _inputs((MLP_IN,), 1)
            else:
                net = torch.nn.Sequential(torch.nn.Conv2d(CONV_IN[0], CONV_CH, 3, padding=1),
                                          snn.Leaky(beta=beta(n_hid), threshold=thr(n_hid), init_hidden=True, **kw),
                                          torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                                          torch.nn.Linear(CONV_CH * 16, CONV_OUT),
                                          snn.Leaky(beta=beta(n_out), threshold=thr(n_out), init_hidden=True, **kw))
                x = _inputs(CONV_IN, 2)
            _init(net, 11, gain=2.0)
            utils.reset(net)
            with torch.no_grad():
                out = [net(torch.from_numpy(x[t])).numpy() for t in range(T)]
            utils.reset(net)
            graph = export_to_nir(net, torch.from_numpy(x[0][:1]), ignore_dims=[0])
            _save(f"snntorch_{fl}_{arch}", graph, x, np.stack(out),
                  {"framework": "snntorch", "version": snn.__version__, "flavour": fl, "arch": arch,
                   "export": "export_to_nir(net, x[0][:1], ignore_dims=[0])", "beta": 0.75,
                   "reset_mechanism": kw.get("reset_mechanism", "subtract"), "reset_delay": True,
                   "run_flags": run_flags}, nir)


# ---------------------------------------------------------------------------------------------
# Norse 1.1.0: LIFBoxCell (exported as NIR LIF) and IAFCell, MLP (its conv + pool/flatten does not export)


def norse():
    import nir
    import norse as norse_pkg
    import norse.torch as nt
    from norse.torch.utils.export_nir import to_nir

    full = lambda n, v: torch.full((n,), v)  # per-neuron tensors: nir.write fails on Norse's scalar parameters
    flavours = {
        "lif": lambda n: nt.LIFBoxCell(nt.LIFBoxParameters(tau_mem_inv=full(n, 300.0), v_th=full(n, 0.3),
                                                           v_leak=full(n, 0.0), v_reset=full(n, 0.0))),
        "if": lambda n: nt.IAFCell(nt.IAFParameters(v_th=full(n, 1.0), v_reset=full(n, 0.0))),
        # LIFCell, Norse's usual LIF, has a synaptic current: exported as CubaLIF
        "lifcell": lambda n: nt.LIFCell(nt.LIFParameters(tau_syn_inv=full(n, 200.0), tau_mem_inv=full(n, 100.0),
                                                         v_th=full(n, 0.3), v_leak=full(n, 0.0),
                                                         v_reset=full(n, 0.0))),
    }
    for fl, mk in flavours.items():
        torch.manual_seed(0)
        net = nt.SequentialState(torch.nn.Linear(MLP_IN, MLP_HID), mk(MLP_HID), torch.nn.Linear(MLP_HID, MLP_OUT),
                                 mk(MLP_OUT))
        x = _inputs((MLP_IN,), 1)
        _init(net, 12, gain=2.0 if fl != "lifcell" else 2.5)
        with torch.no_grad():
            state, out = None, []
            for t in range(T):
                z, state = net(torch.from_numpy(x[t]), state)
                out.append(z.numpy())
        graph = to_nir(net, torch.from_numpy(x[0][:1]))  # a batched sample, as users pass one
        _save(f"norse_{fl}_mlp", graph, x, np.stack(out),
              {"framework": "norse", "version": norse_pkg.__version__ if hasattr(norse_pkg, "__version__") else "1.1.0",
               "flavour": fl, "arch": "mlp", "export": "to_nir(net, x[0][:1]) (dt default 1e-3)",
               "neuron": repr(net[1])}, nir)


# ---------------------------------------------------------------------------------------------
# Rockpool 3.1.0: LIFTorch (exported as CubaLIF), with tau_syn = dt ("lif") and tau_syn > dt ("cubalif")


def rockpool():
    import nir
    import rockpool as rp
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LinearTorch, LIFTorch
    from rockpool.nn.modules.torch.nir import to_nir

    dt = 1e-3
    flavours = {"lif": (dict(tau_mem=0.01, tau_syn=dt), 2.2), "cubalif": (dict(tau_mem=0.01, tau_syn=0.005), 0.5)}
    for fl, (tau, gain) in flavours.items():
        torch.manual_seed(0)
        net = Sequential(LinearTorch((MLP_IN, MLP_HID), has_bias=False), LIFTorch(MLP_HID, dt=dt, **tau),
                         LinearTorch((MLP_HID, MLP_OUT), has_bias=False), LIFTorch(MLP_OUT, dt=dt, **tau))
        x = _inputs((MLP_IN,), 1)
        g = torch.Generator().manual_seed(13)
        with torch.no_grad():
            for lin, n_in in ((net[0], MLP_IN), (net[2], MLP_HID)):
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=g) * 2 - 0.85) * gain / np.sqrt(n_in))
            out, _, _ = net(torch.from_numpy(x).permute(1, 0, 2))  # rockpool: [batch, time, channels]
        graph = to_nir(net)
        _save(f"rockpool_{fl}_mlp", graph, x, out.detach().numpy().transpose(1, 0, 2),
              {"framework": "rockpool", "version": rp.__version__, "flavour": fl, "arch": "mlp",
               "export": "to_nir(net)", "dt": dt, **tau}, nir)


# ---------------------------------------------------------------------------------------------
# Sinabs 3.1.3 (needs nir <= 1.0.4: run in its own venv): LIF (tau_mem in steps, exp decay,
# norm_input) and the default IAF (multi-spike, subtract); MLP on [batch, time, n]


def sinabs():
    import nir
    import sinabs as sb
    import sinabs.layers as sl
    from sinabs.nir import to_nir

    flavours = {
        "lif": (lambda n: sl.LIF(tau_mem=torch.full((n,), 5.0), spike_threshold=torch.ones(n)), 10.0),
        "iaf": (lambda n: sl.IAF(spike_threshold=torch.tensor(1.0)), 1.2),
    }
    for fl, (mk, gain) in flavours.items():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(MLP_IN, MLP_HID), mk(MLP_HID), torch.nn.Linear(MLP_HID, MLP_OUT),
                                  mk(MLP_OUT))
        x = _inputs((MLP_IN,), 1)
        _init(net, 14, gain=gain)
        with torch.no_grad():
            out = net(torch.from_numpy(x).permute(1, 0, 2)).numpy().transpose(1, 0, 2)  # sinabs: [batch, time, n]
        for m in net:
            if hasattr(m, "reset_states"):
                m.reset_states()
        graph = to_nir(net, torch.from_numpy(x[:, :1]).permute(1, 0, 2))
        _save(f"sinabs_{fl}_mlp", graph, x, out,
              {"framework": "sinabs", "version": sb.__version__, "flavour": fl, "arch": "mlp",
               "export": "to_nir(net, x[:, :1] as [1, T, n]) (nir 1.0.4)", "neuron": repr(net[1])}, nir)


# ---------------------------------------------------------------------------------------------
# reverse: the project's exports (tools/nir_golden/make_exports.py) imported and run by each framework


def _run_steps(step, x):
    """The framework's outputs for x [T, N, ...], one step at a time."""
    with torch.no_grad():
        return np.stack([np.asarray(step(torch.from_numpy(x[t]).float())) for t in range(x.shape[0])])


def _import_spikingjelly(graph, x):
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net = import_from_nir(graph, dt=float(graph.metadata.get("dt", 1e-4)))
    return _stateful(net, x)  # the imported GraphModule takes and returns its state


def _stateful(net, x):
    state = [None]

    def step(xt):
        out, state[0] = net(xt, state[0]) if state[0] is not None else net(xt)
        return out.numpy()
    return _run_steps(step, x)


def _import_snntorch(graph, x):
    from snntorch.import_nir import import_from_nir

    return _stateful(import_from_nir(graph), x)


def _import_norse(graph, x):
    import norse.torch as nt

    return _stateful(nt.from_nir(graph, dt=float(graph.metadata.get("dt", 1e-4))), x)


def _import_rockpool(graph, x):
    from rockpool.nn.modules.torch.nir import from_nir

    net = from_nir(graph)
    out = net(torch.from_numpy(x).float().permute(1, 0, 2))
    out = out[0] if isinstance(out, tuple) else out
    return out.detach().numpy().transpose(1, 0, 2)


def _import_sinabs(graph, x):
    import sinabs

    t_steps, n = x.shape[:2]
    net = sinabs.from_nir(graph, batch_size=n)  # Squeeze layers: [batch * time, ...], batch-major
    with torch.no_grad():
        xt = torch.from_numpy(x).float().permute(1, 0, *range(2, x.ndim)).reshape(n * t_steps, *x.shape[2:])
        out = net(xt)
    out = out[0] if isinstance(out, tuple) else out  # nirtorch's executor returns (output, state)
    return out.numpy().reshape(n, t_steps, -1).swapaxes(0, 1)


IMPORTERS = {"spikingjelly": _import_spikingjelly, "snntorch": _import_snntorch, "norse": _import_norse,
             "rockpool": _import_rockpool, "sinabs": _import_sinabs}


def reverse(frameworks):
    import nir

    for d in sorted((OUT / "export").iterdir()):
        if not (d / "model.nir").is_file():
            continue
        x = np.load(d / "input.npz")["x"].astype(np.float32)
        res_path = d / "result.json"
        results = json.loads(res_path.read_text()) if res_path.exists() else {}
        for fw in frameworks:
            if "_for-" in d.name and not d.name.endswith(f"_for-{fw}"):
                continue  # an export for another importer
            try:
                graph = nir.read(str(d / "model.nir"))
            except Exception as exc:
                results[fw] = {"status": "refused", "error": f"nir.read: {type(exc).__name__}: {exc}"[:300]}
                continue
            try:
                out = IMPORTERS[fw](graph, x)
                out = out.reshape(out.shape[0], out.shape[1], -1)
                np.savez_compressed(d / f"spikes_{fw}.npz", spikes=out.astype(np.uint8))
                results[fw] = {"status": "ran", "spikes": float(out.sum())}
            except Exception as exc:
                (d / f"spikes_{fw}.npz").unlink(missing_ok=True)
                results[fw] = {"status": "refused", "error": f"{type(exc).__name__}: {exc}"[:300]}
            print(d.name, fw, results[fw])
        res_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def snntorch_synaptic():
    """snnTorch Synaptic (exported as CubaLIF: a synaptic current state), default reset, MLP."""
    import nir
    import snntorch as snn
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    syn = lambda n: snn.Synaptic(alpha=torch.full((n,), 0.5), beta=torch.full((n,), 0.75),
                                 threshold=torch.ones(n), init_hidden=True)
    net = torch.nn.Sequential(torch.nn.Linear(MLP_IN, MLP_HID), syn(MLP_HID), torch.nn.Linear(MLP_HID, MLP_OUT),
                              syn(MLP_OUT))
    x = _inputs((MLP_IN,), 1)
    _init(net, 15, gain=1.0)
    utils.reset(net)
    with torch.no_grad():
        out = [net(torch.from_numpy(x[t])).numpy() for t in range(T)]
    utils.reset(net)
    graph = export_to_nir(net, torch.from_numpy(x[0][:1]), ignore_dims=[0])
    _save("snntorch_synaptic_mlp", graph, x, np.stack(out),
          {"framework": "snntorch", "version": snn.__version__, "flavour": "synaptic", "arch": "mlp",
           "export": "export_to_nir(net, x[0][:1], ignore_dims=[0])", "alpha": 0.5, "beta": 0.75,
           "reset_mechanism": "subtract", "reset_delay": True}, nir)


FRAMEWORKS = {"snntorch_synaptic": snntorch_synaptic, "sinabs": sinabs, "spikingjelly": spikingjelly, "snntorch": snntorch, "norse": norse, "rockpool": rockpool}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="spikingjelly,snntorch,snntorch_synaptic,norse,rockpool",
                    help="comma list of " + ", ".join(FRAMEWORKS) + " (sinabs: in its own venv, nir<=1.0.4)")
    ap.add_argument("--reverse", action="store_true", help="import the project's exports in each --only framework")
    args = ap.parse_args(argv)
    if args.reverse:
        reverse(args.only.split(","))
        return 0
    failed = []
    for name in args.only.split(","):
        try:
            FRAMEWORKS[name]()
        except Exception:
            traceback.print_exc()
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

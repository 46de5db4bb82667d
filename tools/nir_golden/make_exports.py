"""The project's own NIR exports for the reverse check (run with the project's venv, from the root):

    .venv/bin/python tools/nir_golden/make_exports.py

writes tests/golden/nir/export/<flavour>_<arch>[_for-<target>]/: ``model.nir`` (``export_nir`` of a
seeded float network, for the ``nir`` target or one importer's, ``export-nir --for``), ``input.npz``
(the same shapes as the framework goldens), ``spikes_edge-sdfa.npz`` (the project's float executor
on the original network) and ``info.json`` (what was exported; for reset-by-subtraction models the
largest membrane over threshold, since Rockpool and Sinabs emit floor(v/v_th) spikes where the
project emits one). ``make_goldens.py --reverse`` (in the frameworks' venvs) then imports every
model.nir with each framework's own importer and writes its spikes (``spikes_<framework>.npz``) or
its error (``result.json``); tests/test_nir_export.py compares them.

Exports a target refuses (``export-nir --for`` fails in one line) are listed in
``refusals.json`` with the message, so the test can check they still refuse.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.errors import UserError
from edge_sdfa.spec import has_synapses
from host_tools import nir_io
from host_tools.archs import parse_arch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "nir" / "export"
T, N = 10, 4
ARCHS = {"mlp": ("mlp:24-16-6", (24,)),
         "conv": ("convnet:c=4,fc=6,blocks=1,pool=avg,in=2x8x8", (2, 8, 8)),
         "conv-max": ("convnet:c=4,fc=6,blocks=1,pool=max,in=2x8x8", (2, 8, 8))}
FLAVOURS = {"lif": "neuron=lif,tau=3", "lif-subtract": "neuron=lif,tau=3,reset=subtract", "if": "neuron=if",
            "if-subtract": "neuron=if,reset=subtract"}
# "-low": the same neurons with small positive weights, so that no membrane reaches 2 v_th (where
# Rockpool and Sinabs emit floor(v/v_th) spikes and the project one); the gain per arch is the
# largest of a 0.1 grid that keeps the peak below 1.9 v_th
LOW_DRIVE = {("lif-subtract-low", "mlp"): 2.1, ("lif-subtract-low", "conv"): 2.2,
             ("if-subtract-low", "mlp"): 0.5, ("if-subtract-low", "conv"): 0.4}
FLAVOURS.update({f"{fl}-low": FLAVOURS[fl] for fl in ("lif-subtract", "if-subtract")})
FLAVOURS["lif-nodecay"] = FLAVOURS["lif"]  # decay_input=False (no arch option: set on the spec)

# the nir target (run by every framework)
NIR_CASES = [("lif", "mlp"), ("lif", "conv"), ("lif", "conv-max"), ("if", "mlp"), ("if", "conv"), ("if", "conv-max"),
             ("lif-subtract", "mlp"), ("lif-nodecay", "mlp")]
# exports for one importer (export-nir --for <target>), run by that framework only
TARGETED = {
    "snntorch": [("lif", "conv"), ("lif", "conv-max"), ("if", "mlp"), ("if", "conv"), ("if", "conv-max")],
    "norse": [("lif", "conv"), ("lif", "conv-max"), ("if", "conv"), ("if", "conv-max"), ("lif-nodecay", "mlp")],
    "rockpool": [(fl, "mlp") for fl in ("lif-subtract", "if-subtract", "lif-subtract-low", "if-subtract-low")],
    "sinabs": [(fl, arch) for fl in ("lif-subtract", "if-subtract", "lif-subtract-low", "if-subtract-low")
               for arch in ("mlp", "conv")],
}
# what each target refuses to export, one line (checked by tests/test_nir_export.py)
REFUSED = {"rockpool": [("lif", "mlp"), ("lif-subtract", "conv")], "sinabs": [("lif", "mlp"), ("lif-subtract", "conv-max")],
           "snntorch": [("lif-subtract", "mlp")], "norse": [("lif-subtract", "mlp")]}


def network(fl: str, arch: str):
    """The seeded float network of one flavour x arch (weights with enough drive to spike)."""
    text, shape = ARCHS[arch]
    spec = parse_arch(f"{text},{FLAVOURS[fl]}", shape, 6)
    if fl == "lif-nodecay":
        spec = dataclasses.replace(spec, layers=tuple(
            dataclasses.replace(layer, neuron=dataclasses.replace(layer.neuron, decay_input=False))
            if has_synapses(layer) else layer for layer in spec.layers))
    rng = np.random.default_rng(7)
    if (fl, arch) in LOW_DRIVE:
        span, lo, gain = 1.0, 0.0, LOW_DRIVE[(fl, arch)]   # weights in [0, gain) / sqrt(fan_in)
    else:
        span, lo, gain = 2.0, -0.8, 5.0 if fl.startswith("lif") and fl != "lif-nodecay" else 2.0
    params = [{k: ((rng.random(v.shape) * span + lo) * gain / np.sqrt(np.prod(v.shape[1:]))).astype(np.float32)
               for k, v in p.items()} for p in fn.init_params(spec, 7)]
    x = (np.random.default_rng(21).random((T, N, *shape)) < 0.35).astype(np.uint8)
    return spec, params, x


def peak_over_threshold(spec, params, x) -> float:
    """max over neurons and steps of h / v_th (h: membrane before spike and reset)."""
    tr = fn.forward(spec, params, x.astype(np.float32))
    return max(float(tr.membranes[i].max()) / spec.layers[i].neuron.v_threshold
               for i, layer in enumerate(spec.layers) if has_synapses(layer))


def main():
    cases = [(fl, arch, "nir") for fl, arch in NIR_CASES]
    cases += [(fl, arch, t) for t, pairs in TARGETED.items() for fl, arch in pairs]
    keep = set()
    for fl, arch, target in cases:
        spec, params, x = network(fl, arch)
        d = OUT / (f"{fl}_{arch}" if target == "nir" else f"{fl}_{arch}_for-{target}")
        keep.add(d.name)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        nir_io.export_nir(spec, params, d / "model.nir", target=target)
        np.savez_compressed(d / "input.npz", x=x)
        out = fn.forward(spec, params, x.astype(np.float32)).outputs[-1].reshape(T, N, -1)
        np.savez_compressed(d / "spikes_edge-sdfa.npz", spikes=out.astype(np.uint8))
        info = {"flavour": fl, "arch": arch, "target": target, "network": f"{ARCHS[arch][0]},{FLAVOURS[fl]}",
                "decay_input": fl != "lif-nodecay",
                "spikes": int(out.sum()), "peak_v_over_v_th": round(peak_over_threshold(spec, params, x), 4)}
        (d / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        print(d.name, "spikes", int(out.sum()), "peak v/v_th", info["peak_v_over_v_th"])
    for old in OUT.iterdir():
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old)
    refusals = {}
    for target, pairs in REFUSED.items():
        for fl, arch in pairs:
            spec, params, _ = network(fl, arch)
            try:
                nir_io.export_graph(spec, params, target=target)
            except UserError as exc:
                refusals[f"{fl}_{arch}_for-{target}"] = {"network": f"{ARCHS[arch][0]},{FLAVOURS[fl]}",
                                                         "input_shape": list(ARCHS[arch][1]), "target": target,
                                                         "error": str(exc)}
            else:
                raise SystemExit(f"{fl}_{arch} --for {target} was expected to refuse")
    (OUT / "refusals.json").write_text(json.dumps(refusals, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

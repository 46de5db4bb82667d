"""The project's own NIR exports for the reverse check (run with the project's venv, from the root):

    .venv/bin/python tools/nir_golden/make_exports.py

writes tests/golden/nir/export/<flavour>_<arch>[_for-<target>]/{model.nir, input.npz} (``export_nir``
of a seeded float network, for the ``nir`` target or one importer's; the same shapes as the
framework goldens). ``make_goldens.py --reverse`` (in the
frameworks' venv) then imports every model.nir in each framework and writes that framework's
spikes (``spikes_<framework>.npz``) or its refusal (``result.json``); tests/test_nir_export.py
compares them with the project's own float spikes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edge_sdfa import float_net as fn
from host_tools import nir_io
from host_tools.archs import parse_arch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "nir" / "export"
T, N = 10, 4
ARCHS = {"mlp": ("mlp:24-16-6", (24,)), "conv": ("convnet:c=4,fc=6,blocks=1,pool=avg,in=2x8x8", (2, 8, 8))}
FLAVOURS = {"lif": "neuron=lif,tau=3", "lif-subtract": "neuron=lif,tau=3,reset=subtract", "if": "neuron=if"}


# exports for one importer (export-nir --for): where the nir target is not read right by it
TARGETED = [("snntorch", "lif", "conv"), ("snntorch", "if", "mlp"), ("snntorch", "if", "conv"),
            ("norse", "if", "conv")]


def main():
    cases = [(fl, arch, "nir") for fl in FLAVOURS for arch in ARCHS if (fl, arch) != ("lif-subtract", "conv")]
    cases += [(fl, arch, t) for t, fl, arch in TARGETED]
    for fl, arch, target in cases:
        nopts = FLAVOURS[fl]
        text, shape = ARCHS[arch]
        if True:
            spec = parse_arch(f"{text},{nopts}", shape, 6)
            rng = np.random.default_rng(7)
            gain = 5.0 if fl.startswith("lif") else 2.0
            params = [{k: ((rng.random(v.shape) * 2 - 0.8) * gain / np.sqrt(np.prod(v.shape[1:]))).astype(np.float32)
                       for k, v in p.items()} for p in fn.init_params(spec, 7)]
            d = OUT / (f"{fl}_{arch}" if target == "nir" else f"{fl}_{arch}_for-{target}")
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            nir_io.export_nir(spec, params, d / "model.nir", target=target)
            rng = np.random.default_rng(21)
            x = (rng.random((T, N, *shape)) < 0.35).astype(np.uint8)
            np.savez_compressed(d / "input.npz", x=x)
            out = fn.forward(spec, params, x.astype(np.float32)).outputs[-1]
            print(d.name, spec.layers[-1], "rate", float(out.mean()))


if __name__ == "__main__":
    main()

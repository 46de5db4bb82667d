"""Named training workloads for the accounting, built with ``edge_sdfa.spec``.

Shapes, neurons, time steps and batch sizes follow the SDFA reference configs
(research/sdfa-reference.md, section B). Conv nets end in ``10 * classes`` outputs that a voting
layer averages in groups of 10; the vote is digital and is not mapped. BatchNorm (ConvNet) is
folded into the weights at inference and is not mapped either.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge_sdfa.errors import UserError
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, NeuronSpec, Pool2d, mlp

LIF = NeuronSpec("lif", tau=2.0)
IF = NeuronSpec("if")


@dataclass(frozen=True)
class Workload:
    name: str
    spec: NetworkSpec
    batch: int
    trainable_from: int = 0     # first layer index that is trained; earlier layers are forward-only
    classes: int | None = None  # after voting; defaults to the spec's outputs
    source: str = ""

    @property
    def num_classes(self) -> int:
        return self.classes or self.spec.num_classes


def _conv_blocks(channels: list[int], pools: list[bool], neuron: NeuronSpec) -> list:
    layers = []
    for (a, b), pool in zip(zip(channels[:-1], channels[1:]), pools):
        layers.append(Conv2d(a, b, 3, 1, 1, neuron=neuron))
        if pool:
            layers.append(Pool2d(2))
    return layers


def _flat_size(input_shape: tuple[int, ...], layers: list) -> int:
    shape = tuple(input_shape)
    for layer in layers:
        shape = layer.output_shape(shape)
    return Flatten().output_shape(shape)[0]


def convnet(input_shape: tuple[int, int, int], classes: int, neuron: NeuronSpec, time_steps: int,
            loss: str) -> NetworkSpec:
    layers = _conv_blocks([input_shape[0], 32, 64, 128, 128, 128], [True] * 5, neuron)
    flat = _flat_size(input_shape, layers)
    layers += [Flatten(), Dense(flat, 1024, bias=True, neuron=neuron),
               Dense(1024, 10 * classes, bias=True, neuron=neuron)]
    return NetworkSpec(input_shape, tuple(layers), time_steps, loss)


def vgg11(input_shape: tuple[int, int, int], classes: int, neuron: NeuronSpec, time_steps: int,
          loss: str) -> NetworkSpec:
    channels = [input_shape[0], 64, 128, 256, 256, 512, 512, 512, 512]
    pools = [True, True, False, True, False, True, False, True]
    layers = _conv_blocks(channels, pools, neuron)
    flat = _flat_size(input_shape, layers)
    layers += [Flatten(), Dense(flat, 4096, bias=True, neuron=neuron),
               Dense(4096, 4096, bias=True, neuron=neuron),
               Dense(4096, 10 * classes, bias=True, neuron=neuron)]
    return NetworkSpec(input_shape, tuple(layers), time_steps, loss)


def _nmnist(depth: int) -> Workload:
    sizes = [2312] + [1000] * (depth - 1) + [10]
    return Workload(f"nmnist-mlp{depth}", mlp(sizes, LIF, 10, "ce"), 128,
                    source=f"NMNIST/mlp{'abcd'[depth - 2]}.yml: {'-'.join(map(str, sizes))}, LIF, T=10, batch 128")


def named_workloads() -> dict[str, callable]:
    return {
        "nmnist-mlp2": lambda: _nmnist(2),
        "nmnist-mlp3": lambda: _nmnist(3),
        "nmnist-mlp4": lambda: _nmnist(4),
        "nmnist-mlp5": lambda: _nmnist(5),
        "shd-mlpb": lambda: Workload("shd-mlpb", mlp([700, 100, 100, 20], IF, 100, "mse"), 64,
                                     source="SHD/mlpb.yml: 700-100-100-20, IF, T=100, batch 64"),
        "braille-mlpb": lambda: Workload("braille-mlpb", mlp([4, 200, 200, 28], IF, 20, "mse"), 64,
                                         source="Braille_letter/mlpb.yml: 4-200-200-28, IF, T=20 (config; "
                                                "the loader really uses 2x the shortest recording), batch 64"),
        "dvs-convnet": lambda: Workload("dvs-convnet", convnet((2, 128, 128), 11, LIF, 30, "mse"), 8,
                                        classes=11, source="DVS_Gesture/conv.yml: ConvNet c=128, LIF, T=30, batch 8"),
        "dvs-vgg11": lambda: Workload("dvs-vgg11", vgg11((2, 128, 128), 11, IF, 30, "mse"), 8, classes=11,
                                      source="DVS_Gesture/vgg.yml: VGG11 c=512, IF, T=30, batch 8"),
        "ncaltech-vgg11": lambda: Workload("ncaltech-vgg11", vgg11((2, 180, 240), 101, IF, 30, "ce"), 4,
                                           classes=101, source="NCaltech101/vgg.yml: VGG11 c=512, IF, T=30, batch 4"),
    }


WORKLOAD_NAMES = tuple(named_workloads()) + ("bundle:PATH",)


def load_workload(name: str, batch: int | None = None) -> Workload:
    """A named workload, or ``bundle:PATH`` for the trainable head (and frozen front) of a bundle."""
    if name.startswith("bundle:"):
        wl = bundle_workload(Path(name[len("bundle:"):]))
    else:
        table = named_workloads()
        if name not in table:
            raise UserError(f"unknown workload {name!r} (known: {', '.join(WORKLOAD_NAMES)})")
        wl = table[name]()
    if batch is not None:
        if batch < 1:
            raise UserError(f"batch must be >= 1, got {batch}")
        wl = Workload(wl.name, wl.spec, batch, wl.trainable_from, wl.classes, wl.source)
    return wl


def bundle_workload(path: Path, batch: int = 16) -> Workload:
    """Read a bundle's manifest (directory or .tar) and account its whole network.

    The frozen front (layers before the partition point) runs forward only; the head is trained.
    """
    manifest = _read_manifest(path)
    spec_dict = manifest.get("spec") or manifest.get("network") or manifest.get("head_spec")
    if not isinstance(spec_dict, dict):
        raise UserError(f"{path}: manifest.json has no network spec ('spec' or 'network')")
    spec = NetworkSpec.from_dict(spec_dict)
    cut = manifest.get("partition", manifest.get("partition_point", 0))
    if isinstance(cut, dict):
        cut = cut.get("cut", cut.get("index", 0))
    try:
        cut = int(cut or 0)
    except (TypeError, ValueError):
        raise UserError(f"{path}: partition point {cut!r} is not an integer") from None
    finetune = manifest.get("finetune") if isinstance(manifest.get("finetune"), dict) else {}
    batch = int(finetune.get("batch_size", batch) or batch)
    return Workload(f"bundle:{path}", spec, batch, trainable_from=cut, source=f"bundle {path}")


def _read_manifest(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"no such bundle: {path}")
    import tarfile

    try:
        if path.is_dir():
            return json.loads((path / "manifest.json").read_text())
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("manifest.json")), None)
            if member is None:
                raise UserError(f"{path}: no manifest.json in the archive")
            return json.loads(tar.extractfile(member).read())
    except (OSError, ValueError, tarfile.TarError) as exc:
        raise UserError(f"{path}: cannot read manifest.json: {exc}") from None

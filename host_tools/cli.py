"""Host commands: pretrain, partition, export-nir, import-nir, nir run (workstation side).

Each command imports host_tools only inside its body, so a device that never calls them never
loads host code (nir, h5py, the data set readers).
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

from edge_sdfa.cli.output import emit


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("partition")(partition)
    app.command("export-nir")(export_nir)
    app.command("import-nir")(import_nir)
    nir_app = typer.Typer(help="NIR graphs from other frameworks: run them as they ran there.", no_args_is_help=True)
    nir_app.command("run")(nir_run)
    app.add_typer(nir_app, name="nir")


def pretrain(
    data: str = typer.Option(..., "--data", help="data set spec, e.g. digits or nmnist:PATH (its train split trains)"),
    arch: str = typer.Option(..., "--arch", help="mlp:2312-1000-10 | convnet[:opts] | vgg11[:opts]"),
    out: str = typer.Option(..., "--out", help="the NIR file to write (model.nir)"),
    method: str = typer.Option("bptt", "--method", help="bptt | sdfa (= sdfa_exact) | sdfa_online"),
    epochs: int = typer.Option(10, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default 1e-3)"),
    batch: int = typer.Option(64, "--batch"),
    seed: int = typer.Option(0, "--seed"),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", "-T", help="default: the data set's"),
    limit: Optional[int] = typer.Option(None, "--limit", help="use only the first N training samples"),
    test_data: Optional[str] = typer.Option(None, "--test-data", help="override the derived test split"),
    loss: str = typer.Option("ce", "--loss", help="ce | mse"),
    dt: Optional[float] = typer.Option(None, "--dt", help="seconds per step written to NIR (default 1e-4)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
):
    """Train a float SNN on the host and write it as a NIR graph."""
    from host_tools.pretrain import pretrain as run

    report = run(data, arch, out, method=method, epochs=epochs, lr=lr, batch_size=batch, seed=seed,
                 time_steps=time_steps, limit=limit, test_data=test_data, loss=loss, dt=dt, progress=not quiet)
    emit(report, as_json)


def partition(
    model: str = typer.Argument(..., help="the .nir model"),
    out: str = typer.Option(..., "--out", help="bundle directory to create"),
    calib: str = typer.Option(..., "--calib", help="calibration data spec (its train split; rehearsal comes from it)"),
    trainable_layers: Optional[int] = typer.Option(None, "--trainable-layers", "-k", help="train the last K synaptic layers"),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="e.g. 64MB (10^6) or 64MiB (2^20)"),
    frozen_format: str = typer.Option("npz", "--frozen-format", help="npz | onnx | tflite"),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="held-out data spec (default: the test split of --calib)"),
    calib_samples: int = typer.Option(256, "--calib-samples"),
    holdout_samples: int = typer.Option(200, "--holdout-samples", help="samples written to holdout.npz"),
    rehearsal_samples: int = typer.Option(300, "--rehearsal-samples", help="samples written to rehearsal.npz"),
    batch: Optional[int] = typer.Option(None, "--batch", help="fine-tuning batch for the plan and the bundle default"),
    model_id: Optional[str] = typer.Option(None, "--model-id"),
    version: int = typer.Option(1, "--version"),
    seed: int = typer.Option(0, "--seed"),
    dt: Optional[float] = typer.Option(None, "--dt", help="NIR seconds per step (default: graph metadata, else 1e-4)"),
    reset: str = typer.Option("auto", "--reset", help="auto (the exporter's rule) | hard | subtract"),
    framework: str = typer.Option("auto", "--framework", help="whose rules the graph follows (auto: from the file)"),
    spike_if: Optional[str] = typer.Option(None, "--spike-if", help="'>' | '>=' (int8 runs '>=' only)"),
    approximate: bool = typer.Option(False, "--approximate", help="accept documented approximations (CubaLIF, LI)"),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", "-T", help="default: graph metadata, else 10"),
    runtime_overhead: Optional[str] = typer.Option(None, "--runtime-overhead",
                                                   help="planner's fixed runtime bytes (default 40MiB: the runtime with the C kernels)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (the full plan, calibration, rules)"),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Quantise a NIR model to int8, plan device memory, check design rules, write a bundle."""
    from host_tools.partition import partition as run

    report = run(model, out, calib=calib, trainable_layers=trainable_layers, memory_budget=memory_budget,
                 frozen_format=frozen_format, holdout=holdout, calib_samples=calib_samples,
                 holdout_samples=holdout_samples, rehearsal_samples=rehearsal_samples, batch=batch,
                 model_id=model_id, version=version, seed=seed, dt=dt, reset=reset, approximate=approximate,
                 framework=framework, spike_if=spike_if,
                 time_steps=time_steps, runtime_overhead=runtime_overhead, progress=not quiet)
    if as_json:
        emit(report, True)
        return
    short = {k: v for k, v in report.items() if k not in ("plans", "calibration", "design_rules", "plan", "files")}
    short["plan_total_mib"] = report["plan"]["total_mib"]
    emit(short, False)
    sys.stdout.write("plan (bytes per cut):\n")
    for p in report["plans"]:
        mark = "*" if p["cut"] == report["cut"] else " "
        sys.stdout.write(f" {mark} cut {p['cut']:>2}  trainable {p['trainable_layers']}  "
                         f"{p['total_mib']:>10.3f} MiB  {', '.join(p['trainable_kinds'])}\n")
    for r in report["design_rules"]:
        sys.stdout.write(f"  [{r['status']}] {r['rule']}: {r['detail']}\n")


def export_nir(
    source: str = typer.Argument(..., help="store dir (its active weights) or bundle dir/.tar"),
    out: str = typer.Option(..., "--out", help="the NIR file to write"),
    frozen_from: Optional[str] = typer.Option(None, "--frozen-from", help="source .nir, for onnx/tflite bundles"),
    dt: Optional[float] = typer.Option(None, "--dt"),
    target: str = typer.Option("nir", "--for", help="nir (NIR's reading; SpikingJelly) | snntorch | norse | rockpool | sinabs (docs/nir.md)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Export the (fine-tuned) int8 model of a store or bundle back to NIR."""
    from host_tools.nir_io import export_finetuned

    emit(export_finetuned(source, out, frozen_from=frozen_from, dt=dt, target=target), as_json)


def import_nir(
    model: str = typer.Argument(..., help="a .nir file from any framework"),
    dt: Optional[float] = typer.Option(None, "--dt"),
    reset: str = typer.Option("auto", "--reset", help="auto (the exporter's rule) | hard | subtract"),
    framework: str = typer.Option("auto", "--framework", help="whose rules the graph follows (auto: from the file)"),
    spike_if: Optional[str] = typer.Option(None, "--spike-if", help="'>' | '>=' (int8 runs '>=' only)"),
    multi_spike: Optional[bool] = typer.Option(None, "--multi-spike/--single-spike"),
    approximate: bool = typer.Option(False, "--approximate"),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", "-T"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Check that a NIR graph imports, and show the network it maps to (nothing is written)."""
    from host_tools.nir_io import import_graph

    imp = import_graph(model, dt=dt, reset=reset, approximate=approximate, time_steps=time_steps, framework=framework,
                       spike_if=spike_if, multi_spike=multi_spike)
    shapes = imp.spec.shapes()
    emit({"nodes": imp.nodes, "dt": imp.dt, "time_steps": imp.spec.time_steps, "loss": imp.spec.loss,
          "layers": [f"{l.type}{tuple(a)}->{tuple(b)}" for l, a, b in zip(imp.spec.layers, shapes[:-1], shapes[1:])],
          "neurons": [dict(layer=i, **l.neuron.__dict__) for i, l in enumerate(imp.spec.layers) if hasattr(l, "neuron")],
          "network": imp.spec.to_dict(), "semantics": imp.semantics, "notes": imp.notes}, as_json)


def nir_run(
    model: str = typer.Argument(..., help="a .nir file from any framework"),
    input: str = typer.Option(..., "--input", help=".npz with x [T, N, *input_shape] (input spikes per step)"),
    out: str = typer.Option(..., "--out", help=".npz to write: spikes [T, N, n_out]"),
    framework: str = typer.Option("auto", "--framework",
                                  help="auto (from the file) | edge-sdfa | spikingjelly | snntorch | norse | rockpool | sinabs | nir"),
    dt: Optional[float] = typer.Option(None, "--dt", help="seconds per step (Norse: its own dt, default 1e-3)"),
    reset: Optional[str] = typer.Option(None, "--reset", help="hard | subtract | subtract-delayed (snnTorch's default)"),
    spike_if: Optional[str] = typer.Option(None, "--spike-if", help="'>' | '>=' (v against v_threshold)"),
    decay: Optional[str] = typer.Option(None, "--decay", help="euler (1 - dt/tau) | exp (exp(-dt/tau)) | exp-norm (Sinabs: input times 1 - exp(-dt/tau))"),
    multi_spike: Optional[bool] = typer.Option(None, "--multi-spike/--single-spike", help="floor(v/v_th) spikes a step"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Simulate a NIR graph (float) on input spikes with its framework's rules; write the output spikes."""
    from host_tools.nir_run import run_file

    emit(run_file(model, input, out, framework=framework, dt=dt, reset=reset, spike_if=spike_if, decay=decay,
                  multi_spike=multi_spike), as_json)

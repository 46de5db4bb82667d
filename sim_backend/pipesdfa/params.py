"""Hardware parameters of the simulated RRAM accelerator: small frozen dataclasses, loaded from presets.

A preset is a JSON data file in ``presets/`` in which every value carries its source
(``{"value": ..., "source": "..."}``). ``load_preset`` checks that every field of every dataclass is
present and sourced, so a preset cannot silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from edge_sdfa.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "neurosim32"


@dataclass(frozen=True)
class DeviceParams:
    """One RRAM cell (1T1R) and its non-idealities."""

    r_on_ohm: float
    r_off_ohm: float
    levels: int                 # conductance levels per cell (2**cell_bits)
    nl_ltp: float               # potentiation nonlinearity (NeuroSim definition)
    nl_ltd: float               # depression nonlinearity
    c2c_sigma: float            # cycle-to-cycle programming noise, fraction of the conductance range
    d2d_sigma: float            # device-to-device spread of the step size, fraction of the step
    read_noise_sigma: float     # read noise, fraction of the conductance range
    stuck_at_off: float         # fraction of cells stuck at G_off (SA0)
    stuck_at_on: float          # fraction of cells stuck at G_on (SA1)
    endurance_pulses: float     # write pulses a cell survives

    @property
    def g_on(self) -> float:
        return 1.0 / self.r_on_ohm

    @property
    def g_off(self) -> float:
        return 1.0 / self.r_off_ohm

    @property
    def cell_bits(self) -> int:
        return int(round(math.log2(self.levels)))


@dataclass(frozen=True)
class CrossbarParams:
    rows: int
    cols: int
    access_r_ohm: float         # access transistor on-resistance
    v_read: float
    t_read_s: float             # read pulse width
    v_dd: float
    feature_size_m: float
    cell_height_f: float        # cell height in feature sizes (along a bit line)
    cell_width_f: float         # cell width in feature sizes (along a word line)
    wire_cap_f_per_m: float


@dataclass(frozen=True)
class WriteParams:
    v_write: float
    t_pulse_s: float
    parallel_arrays: int        # arrays the write drivers / charge pumps can program at once
    verify_iterations: float    # mean pulse+verify iterations per level step in write-verify mode
    stochastic_bl: int          # pulse-train length of a parallel stochastic outer-product update


@dataclass(frozen=True)
class AdcParams:
    """Column readout. ``model`` 'sar_linear': P = p_per_bit*b + p_base + a*exp(-b_col*log10 R_col),
    t = (b+1)*t_unit (NeuroSim V2.1 SAR, with its column-resistance term); 'table': energy per
    conversion from ``table_j`` ([[bits, J], ...]), scaled by 2**(b - nearest tabulated bits) outside
    it (Accelergy's ISAAC ADC, whose scaling rule is pow_base(2)); 'exp2': E = e_ref * 2**(b - bits_ref).
    t = t_unit*(b+1) for every model."""

    bits: int
    cols_per_adc: int
    model: str
    t_unit_s: float
    p_per_bit_w: float
    p_base_w: float
    e_ref_j: float
    bits_ref: int
    sense_amp_cols: int         # columns per 1-bit sense amplifier in the ADC-less readout
    col_term_a_w: float = 0.0   # NeuroSim SAR column-resistance power term a * exp(-b * log10 R_col)
    col_term_b: float = 0.0
    table_j: tuple = ()         # [[bits, joules per conversion], ...] for model 'table'

    def conversion_time(self, bits: int | None = None) -> float:
        b = self.bits if bits is None else bits
        return (b + 1) * self.t_unit_s

    def conversion_energy(self, bits: int | None = None, r_col_ohm: float | None = None) -> float:
        """Joules per conversion; ``r_col_ohm`` (the column's resistance while it is read) adds
        NeuroSim's column term to the SAR model."""
        b = self.bits if bits is None else bits
        if self.model == "sar_linear":
            p = self.p_per_bit_w * b + self.p_base_w
            if r_col_ohm is not None and r_col_ohm > 0 and self.col_term_a_w:
                p += self.col_term_a_w * math.exp(-self.col_term_b * math.log10(r_col_ohm))
            return p * self.conversion_time(b)
        if self.model == "table":
            return table_value(self.table_j, b)
        if self.model == "exp2":
            return self.e_ref_j * 2.0 ** (b - self.bits_ref)
        raise UserError(f"unknown ADC model {self.model!r} (expected 'sar_linear', 'table' or 'exp2')")

    def columns_per_converter(self, bits: int | None = None) -> int:
        b = self.bits if bits is None else bits
        return self.sense_amp_cols if b == 1 else self.cols_per_adc


def table_value(table, bits: int) -> float:
    """A per-bit table ``[[bits, value], ...]``: exact where tabulated, else the nearest entry
    scaled by 2**(bits - its bits) (Accelergy's pow_base(2) resolution scaling)."""
    if not table:
        raise UserError("an ADC 'table' model needs a non-empty table")
    rows = sorted((int(b), float(v)) for b, v in table)
    for b, v in rows:
        if b == bits:
            return v
    b, v = min(rows, key=lambda r: abs(r[0] - bits))
    return v * 2.0 ** (bits - b)


@dataclass(frozen=True)
class PeripheralParams:
    p_driver_w: float           # 1-bit row driver (DAC) power while its row is held for a read cycle
    sram_j_per_bit: float
    wire_j_per_bit_mm: float
    hop_j_per_bit: float
    link_mm: float              # mean wire length between the tiles of consecutive layers
    dram_j_per_bit: float
    dram_bits_per_s: float
    buffer_bits_per_array: float
    e_digital_op_j: float       # one 16-bit add / compare in the digital units
    digital_ops_per_cycle_per_tile: int   # 16-bit lanes of one tile's digital units
    arrays_per_tile: int        # crossbars sharing one tile's buffer, digital units and router
    clock_hz: float


@dataclass(frozen=True)
class AreaParams:
    """Silicon area per component (the cell area comes from the crossbar section)."""

    adc_table_um2: tuple = ()   # [[bits, um^2 per converter], ...], pow2 scaling outside
    driver_um2: float = 0.0     # one 1-bit row driver
    buffer_um2_per_bit: float = 0.0
    lane_um2: float = 0.0       # one 16-bit digital lane (adder / shift-add)
    interconnect_um2_per_tile: float = 0.0   # router share + buffer-to-array bus of one tile


@dataclass(frozen=True)
class LeakageParams:
    """Static power, charged for the whole latency of an update."""

    adc_fraction: float = 0.0   # leakage / peak power of a converter
    buffer_w_per_bit: float = 0.0
    driver_w: float = 0.0       # one row driver
    lane_w: float = 0.0         # one digital lane


@dataclass(frozen=True)
class BaselineParams:
    """The PipeLayer baseline (Song et al., HPCA 2017)."""

    granularity: int = 1        # G: replicas of each conv layer's weights, splitting its positions
    backward_arrays: int = 1    # 1: W^T on separate arrays for the error pass (written too); 0: shared


@dataclass(frozen=True)
class HardwareParams:
    name: str
    device: DeviceParams
    crossbar: CrossbarParams
    write: WriteParams
    adc: AdcParams
    periph: PeripheralParams
    area: AreaParams = AreaParams()
    leakage: LeakageParams = LeakageParams()
    baseline: BaselineParams = BaselineParams()
    assumptions: tuple = ()     # "section.field" of every value without a published source
    weight_bits: int = 8        # int8 weights
    error_bits: int = 8         # bits of the error / delta fed bit-serially into an MVM
    membrane_bits: int = 16

    @property
    def slices(self) -> int:
        """Cells (per polarity) a signed int8 weight occupies: magnitude digits of cell_bits each."""
        return max(1, math.ceil(self.weight_bits / self.device.cell_bits))

    def with_adc_bits(self, bits: int) -> "HardwareParams":
        if not 1 <= bits <= 16:
            raise UserError(f"ADC bits must be in 1..16, got {bits}")
        return dataclasses.replace(self, adc=dataclasses.replace(self.adc, bits=bits))

    def replace(self, **sections) -> "HardwareParams":
        """``hw.replace(write={"t_pulse_s": 1e-8})``: a copy with some fields of some sections changed."""
        changed = {}
        for section, fields in sections.items():
            current = getattr(self, section)
            changed[section] = dataclasses.replace(current, **fields) if isinstance(fields, dict) else fields
        return dataclasses.replace(self, **changed)


_SECTIONS = {"device": DeviceParams, "crossbar": CrossbarParams, "write": WriteParams,
             "adc": AdcParams, "periph": PeripheralParams, "area": AreaParams, "leakage": LeakageParams,
             "baseline": BaselineParams}
ASSUMPTION_PREFIX = "assumption"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str = DEFAULT_PRESET) -> HardwareParams:
    """A preset by name (``neurosim32``, ``isaac``) or by path to a JSON file of the same shape."""
    path = Path(name)
    if not (path.suffix == ".json" and path.exists()):
        path = PRESET_DIR / f"{name}.json"
    if not path.exists():
        raise UserError(f"unknown preset {name!r} (known: {', '.join(available_presets())})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"preset {path} is not valid JSON: {exc}") from None
    return preset_from_dict(raw, str(path))


def preset_from_dict(raw: dict, where: str = "preset") -> HardwareParams:
    sections = {}
    for key, cls in _SECTIONS.items():
        table = raw.get(key)
        if not isinstance(table, dict):
            raise UserError(f"{where}: missing section {key!r}")
        values = {}
        for f in dataclasses.fields(cls):
            entry = table.get(f.name)
            if not isinstance(entry, dict) or "value" not in entry or not str(entry.get("source", "")).strip():
                raise UserError(f"{where}: {key}.{f.name} needs a value and a source")
            value = entry["value"]
            values[f.name] = tuple(tuple(v) if isinstance(v, list) else v for v in value) \
                if isinstance(value, list) else value
        unknown = set(table) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"{where}: unknown fields in {key}: {', '.join(sorted(unknown))}")
        sections[key] = cls(**values)
    extra = {k: raw[k]["value"] for k in ("weight_bits", "error_bits", "membrane_bits") if k in raw}
    declared = sorted(raw.get("assumptions", []))
    unsourced = sorted(f"{key}.{name}" for key in _SECTIONS for name, entry in raw[key].items()
                       if str(entry["source"]).lower().startswith(ASSUMPTION_PREFIX))
    if declared != unsourced:
        raise UserError(f"{where}: 'assumptions' must list exactly the values whose source starts with "
                        f"'assumption' (listed {declared}, found {unsourced})")
    return HardwareParams(name=raw.get("name", where), **sections, assumptions=tuple(unsourced), **extra)


def get_value(hw: HardwareParams, key: str):
    section, field = key.split(".", 1)
    return getattr(getattr(hw, section), field)


def with_value(hw: HardwareParams, key: str, value) -> HardwareParams:
    """A copy with ``section.field`` set to ``value`` (cast to the field's current type)."""
    if "." not in key or key.split(".", 1)[0] not in _SECTIONS:
        raise UserError(f"unknown hardware key {key!r} (expected section.field, sections: {', '.join(_SECTIONS)})")
    section, field = key.split(".", 1)
    current = getattr(hw, section)
    if field not in {f.name for f in dataclasses.fields(current)}:
        raise UserError(f"unknown hardware key {key!r}")
    old = getattr(current, field)
    if isinstance(old, bool) or isinstance(old, (tuple, str)):
        raise UserError(f"{key} cannot be swept")
    value = int(round(value)) if isinstance(old, int) else float(value)
    return hw.replace(**{section: {field: value}})


def preset_sources(name: str = DEFAULT_PRESET) -> dict[str, str]:
    """``{"device.r_on_ohm": "NeuroSim V2.0 ...", ...}``: where every value of a preset comes from."""
    path = Path(name) if Path(name).suffix == ".json" else PRESET_DIR / f"{name}.json"
    raw = json.loads(path.read_text())
    return {f"{section}.{field}": entry["source"] for section in _SECTIONS
            for field, entry in raw.get(section, {}).items()}

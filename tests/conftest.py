import os
import subprocess

import numpy.testing  # noqa: F401  (imported here: its first import runs lscpu, a process)
import pytest
from hypothesis import HealthCheck, settings

from edge_sdfa.errors import UserError
from edge_sdfa.int8 import kernels as int8_kernels

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Tiers (pyproject.toml [tool.pytest.ini_options] markers; docs/architecture.md "Tests"):
#   unit         in process, numpy level: no compiler, subprocess, pty or Lava; the tier runs in < 60 s
#   integration  CLI runs in a subprocess, other subprocesses, ptys, C builds, crash-at-every-step loops
#   lava         needs lava-nc; slow: accuracy runs and venv builds
pytest_plugins = ["pytester"]
TIERS = {"unit", "integration", "lava", "slow"}


def pytest_collection_modifyitems(config, items):
    # tests without a tier marker are unit tests
    for item in items:
        if not TIERS & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.unit)


class _ProcessInUnitTest(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """A unit test that starts a process or opens a pty is mislabelled: it fails and says so."""
    marks = {m.name for m in request.node.iter_markers()}
    if "unit" not in marks or marks & {"integration", "lava", "slow"}:
        yield
        return

    def refuse(*args, **kwargs):
        raise _ProcessInUnitTest(f"{request.node.nodeid} is marked unit but starts a process or opens a pty; "
                                 "mark it integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    for name in ("fork", "forkpty", "openpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    yield


# every int8 kernel set, the numpy reference as a unit test, the others (built C) as integration
KERNEL_SET_PARAMS = [pytest.param(name, marks=pytest.mark.unit if name == "numpy" else pytest.mark.integration)
                     for name in int8_kernels.SETS]


@pytest.fixture(scope="module", params=KERNEL_SET_PARAMS)
def ks(request):
    """One int8 kernel set per parametrisation (skipped where it is not installed)."""
    try:
        return int8_kernels.get(request.param)
    except UserError as exc:
        pytest.skip(str(exc))

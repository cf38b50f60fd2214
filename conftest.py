"""Test helper: a headless Scipion environment, so that plain ``pytest`` runs real projects.

Scipion reads its settings from environment variables when pyworkflow is first
imported, and importing the plugin imports pyworkflow; this root conftest runs
before any test module is imported, so it sets them here. Everything goes into
a temporary folder, removed when the test run ends (set FEWSHOTPICKER_KEEP_TEST_DIRS=1 to
keep it for a look at the projects); a SCIPION_HOME already set (a real Scipion install) is kept.
"""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

HOSTS_CONF = """[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s
NAME = SCIPION_HOST
ADDRESS = localhost
MPI_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s
QUEUE_SYSTEM = None
"""


def configure_headless_scipion(base: Path) -> dict:
    """Set the environment a headless Scipion needs under ``base``; returns what was set."""
    home = Path(os.environ.get("SCIPION_HOME") or base / "scipion_home")
    conf = home / "config" / "hosts.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(HOSTS_CONF)
    relion_home = base / "relion_home"  # scipion-em-relion only checks that it exists
    relion_home.mkdir(parents=True, exist_ok=True)
    values = {
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_HOME": str(home),
        "SCIPION_USER_DATA": str(base / "user_data"),
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_TEST_NOSYNC": "1",
        "SCIPION_STEPS_CHECK_SEC": "1",
        "SCIPION_NOTIFY": "False",
        "SCIPION_TESTS": str(base / "tests"),
        "RELION_HOME": os.environ.get("RELION_HOME") or str(relion_home),
        "FEWSHOTPICKER_NO_PROGRESS": "1",
        "MPLBACKEND": "Agg",
    }
    os.environ.update(values)
    return values


def remove_unless_kept(base: Path) -> None:
    """Delete the run's Scipion folder (about 100 MB of projects) unless asked to keep it."""
    if os.environ.get("FEWSHOTPICKER_KEEP_TEST_DIRS") == "1":
        print(f"Scipion test projects kept in {base}", file=sys.stderr)
        return
    shutil.rmtree(base, ignore_errors=True)


_BASE = Path(tempfile.mkdtemp(prefix="fewshot_scipion_"))
configure_headless_scipion(_BASE)
atexit.register(remove_unless_kept, _BASE)

"""Suite-wide set-up: quiet single-process runs, one report from an MPI run, and fixtures for
tests that launch their own MPI jobs (faults, launcher, multi-rank CLI runs).

- Without ``--with-mpi``, tests marked ``mpi`` are *deselected* (one summary count and one
  header line saying how to run them) instead of printing a "need --with-mpi" skip line each.
- Under ``mpiexec -n N python -m pytest --with-mpi``, only rank 0 reports. At the end every
  rank's failures are gathered to rank 0, printed there under the rank's name, and rank 0's
  exit status is non-zero if any rank failed; a one-line total covers all ranks.
"""
import os

import pytest

from tapeflow.distributed.launcher import find_mpiexec

# variables through which a launcher tells a process it is a rank; a nested job must not see them
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "MPI_LOCAL", "HYDRA_", "OMPI_")


def _with_mpi(config: pytest.Config) -> bool:
    return bool(config.getoption("--with-mpi", default=False)
                or config.getoption("--only-mpi", default=False))


def _world() -> tuple[int, int]:
    for rank, size in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if rank in os.environ and size in os.environ:
            return int(os.environ[rank]), int(os.environ[size])
    return 0, 1


# ----------------------------------------------------------------------- single process: quiet
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if _with_mpi(config):
        return
    mpi = [item for item in items if item.get_closest_marker("mpi") is not None]
    if mpi:
        config.hook.pytest_deselected(items=mpi)
        items[:] = [item for item in items if item.get_closest_marker("mpi") is None]
        config.stash[_DESELECTED] = len(mpi)


_DESELECTED = pytest.StashKey[int]()
_FAILURES = pytest.StashKey[list]()
_COUNTS = pytest.StashKey[dict]()


def pytest_report_header(config: pytest.Config) -> str | None:
    if not _with_mpi(config):
        return ("MPI tests (marked mpi) are left out here; run them with "
                "`mpiexec -n 2 python -m pytest --with-mpi tests/distributed`")
    return None


# ----------------------------------------------------------------------- MPI: one report
@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.stash[_FAILURES] = []
    config.stash[_COUNTS] = {}
    rank, size = _world()
    if _with_mpi(config) and size > 1 and rank > 0:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:  # rank 0 speaks for everyone (see pytest_sessionfinish)
            from _pytest.terminal import TerminalWriter

            quiet = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long
            reporter._tw = TerminalWriter(quiet)  # as the session; the reporter stays for
            config.add_cleanup(quiet.close)       # pytest's own uses (assertion colours)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _CONFIG.get("config")
    if config is None or _COUNTS not in config.stash:
        return
    counts = config.stash[_COUNTS]
    if report.failed:
        config.stash[_FAILURES].append((report.nodeid, report.when, report.longreprtext))
        counts["failed"] = counts.get("failed", 0) + 1
    elif report.when == "call" and report.passed:
        counts["passed"] = counts.get("passed", 0) + 1
    elif report.skipped and report.when in ("setup", "call"):
        counts["skipped"] = counts.get("skipped", 0) + 1


_CONFIG: dict = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    rank, size = _world()
    if not (_with_mpi(config) and size > 1):
        return
    try:
        from mpi4py import MPI
    except ImportError:
        return
    if not MPI.Is_initialized() or MPI.Is_finalized():
        return
    gathered = MPI.COMM_WORLD.gather((config.stash[_FAILURES], config.stash[_COUNTS]), root=0)
    if rank != 0:
        return
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
    totals: dict[str, int] = {}
    any_failed = False
    for r, (failures, counts) in enumerate(gathered):
        for key, n in counts.items():
            totals[key] = totals.get(key, 0) + n
        if r == 0 or not failures:
            continue
        any_failed = True
        if reporter is not None:
            reporter.write_sep("=", f"rank {r}: {len(failures)} failed", red=True)
            for nodeid, when, text in failures:
                reporter.write_sep("_", f"rank {r}: {nodeid} ({when})")
                reporter.write_line(text)
    if reporter is not None:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(totals.items()))
        reporter.write_sep("=", f"all {size} ranks: {summary}", bold=True)
    if any_failed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ----------------------------------------------------------------------- fixtures
@pytest.fixture
def mpiexec() -> str:
    """The mpiexec to launch a job with; skips under mpiexec itself or when there is none."""
    if int(os.environ.get("PMI_SIZE", "1")) > 1:
        pytest.skip("launches its own mpiexec job; run it in a plain (non-MPI) pytest")
    try:
        return find_mpiexec()
    except FileNotFoundError as exc:
        pytest.skip(f"no mpiexec: {exc}")


@pytest.fixture
def job_env() -> dict:
    """This process's environment without the launcher's rank variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}

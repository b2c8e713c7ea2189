"""The hierarchical shared-memory reduction across "nodes", on one machine.

``MPICommunicator(node_size=k)`` groups ranks ``rank // k`` as nodes, so a 4-rank job exercises
the cross-node step (each slice all-reduced over MPI between the nodes) and the fall-back to
plain MPI when nodes hold different numbers of ranks. Run by plain pytest (it starts its own
4-rank job, oversubscribed on small machines).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tapeflow.distributed.launcher import mpiexec_argv

SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from tapeflow.distributed import Layout
    from tapeflow.distributed.mpi import MPICommunicator

    def data(r, n, dtype, salt):
        rng = np.random.default_rng([r, n, salt])
        if np.dtype(dtype).kind == "i":
            return rng.integers(-1000, 1000, n).astype(dtype)
        return rng.standard_normal(n).astype(dtype)

    report = {}
    for node_size in (2, 3, 4):
        c = MPICommunicator(node_size=node_size, stall_timeout=30)
        shm = c._shm
        errors = []
        for salt, (dtype, op) in enumerate([(np.float32, "sum"), (np.float32, "average"),
                                            (np.float16, "average"), (np.float64, "max"),
                                            (np.int64, "sum")]):
            n = 50_000 + salt
            buf = c.allreduce(data(c.rank, n, dtype, salt), op=op)
            parts = [data(r, n, dtype, salt).astype(np.float64) for r in range(c.size)]
            want = (np.max(parts, 0) if op == "max" else
                    np.sum(parts, 0) / (c.size if op == "average" else 1))
            tol = 2e-3 if dtype == np.float16 else 1e-5
            if not np.allclose(buf.astype(np.float64), want, rtol=tol, atol=tol):
                errors.append(f"{np.dtype(dtype)} {op}")
        # a gradient reducer: twice, so the second step packs straight into the lent slot
        reducer = c.reducer(Layout(((np.dtype(np.float32), 60_000),), 0), "sum",
                            check_finite=True)
        for step in range(2):
            (a,) = reducer.start(step + 1)
            a[:] = c.rank + 1
            reducer.ready(0)
            finite = reducer.finish()
            if not (finite and np.all(a == c.size * (c.size + 1) / 2)):
                errors.append(f"reducer step {step}")
            del a
        report[node_size] = {"shm": shm is not None, "nodes": shm.nodes if shm else None,
                             "errors": errors}
        rank = c.rank
        c.close()
    with open(f"report_{rank}.json", "w") as f:  # stdout lines of 4 ranks can interleave
        json.dump(report, f)
""")


def test_hierarchical_reduction_over_emulated_nodes(mpiexec, job_env, tmp_path):
    script = tmp_path / "hier.py"
    script.write_text(SCRIPT)
    argv = mpiexec_argv(4, [sys.executable, str(script)], mpiexec=mpiexec, oversubscribe=True,
                        env={"OPENBLAS_NUM_THREADS": "1"})
    proc = subprocess.run(argv, env={**job_env, "OPENBLAS_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report_{r}.json").read_text()) for r in range(4)]
    for rep in reports:
        # 2 nodes of 2 ranks: shared memory within, MPI across
        assert rep["2"] == {"shm": True, "nodes": 2, "errors": []}
        # nodes of 3 and 1 ranks: no shared-memory path, plain MPI, same results
        assert rep["3"] == {"shm": False, "nodes": None, "errors": []}
        # one node of 4 ranks
        assert rep["4"] == {"shm": True, "nodes": 1, "errors": []}

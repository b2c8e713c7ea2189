"""Four-rank jobs (launched by plain pytest): cross ranks over emulated nodes, process sets,
and join with four different step counts.

``MPIR_CVAR_NUM_CLIQUES=2`` makes MPICH treat one machine as two nodes, so ``local_*`` and
``cross_*`` differ from the world numbers as on a real cluster.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tapeflow.distributed.launcher import mpiexec_argv

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tapeflow as tp
    from tapeflow import distributed as dist, optimizers

    c = dist.init()
    r, n = c.rank, c.size
    out = {"rank": r, "local": [c.local_rank, c.local_size], "cross": [c.cross_rank, c.cross_size]}
    # every rank's placement, to check the numbering is consistent
    out["all"] = dist.allgather_object(out["local"] + out["cross"])
    evens = dist.new_group([0, 2])
    odds = dist.new_group([3, 1])
    mine = evens if r % 2 == 0 else odds
    out["group"] = [mine.rank, mine.size, None if (evens if r % 2 else odds) is None else "both"]
    out["group_sum"] = float(mine.allreduce(np.array([float(r)]), op="sum")[0])
    model = tp.nn.mlp([5, 3], seed=0)
    mine.broadcast_variables(model.variables)
    x = tp.constant(np.full((2, 5), r + 1.0, np.float32))
    with dist.DistributedGradientTape(tp.GradientTape(), comm=mine, op="sum") as tape:
        loss = tp.reduce_sum(model(x))
    g = tape.gradient(loss, model.trainable_variables)[0].numpy()
    with tp.GradientTape() as t2:
        local = tp.reduce_sum(model(x))
    out["group_grad_ok"] = bool(np.allclose(g, mine.allreduce(
        t2.gradient(local, model.trainable_variables)[0].numpy(), op="sum"), rtol=1e-5))
    # join: rank r takes r + 2 steps
    opt = optimizers.SGD(learning_rate=0.1)
    counts = []
    with dist.join(variables=model.variables) as j:
        for _ in range(r + 2):
            with dist.DistributedGradientTape(tp.GradientTape()) as tape:
                loss = tp.reduce_sum(model(x) ** 2)
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
            counts.append(float(dist.allreduce(np.array([1.0]), op="sum")[0]))
    out["join_counts"] = counts
    out["last"] = j.last_rank
    flat = np.concatenate([v.numpy().ravel() for v in model.variables])
    every = dist.allgather(flat[None])
    out["same_weights"] = bool(all(np.array_equal(row, every[0]) for row in every))
    with open(sys.argv[1] + f"/out{r}.json", "w") as f:
        json.dump(out, f)
""")


def test_four_ranks_two_emulated_nodes(mpiexec, job_env, tmp_path):
    argv = mpiexec_argv(4, [sys.executable, "-c", SCRIPT, str(tmp_path)], mpiexec=mpiexec,
                        oversubscribe=True)
    job = subprocess.run(argv, env={**job_env, "MPIR_CVAR_NUM_CLIQUES": "2"},
                         capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-3000:]
    outs = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(4)]
    for o in outs:
        local_rank, local_size, cross_rank, cross_size = o["local"] + o["cross"]
        assert (local_size, cross_size) == (2, 2)
        # (local, cross) pairs number the ranks one to one
        assert sorted(tuple(a[::2]) for a in o["all"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r, o in enumerate(outs):
        assert o["group"][:2] == ([r // 2, 2] if r % 2 == 0 else [1 - r // 2, 2])
        assert o["group"][2] is None  # not a member of the other set
        assert o["group_sum"] == (0 + 2 if r % 2 == 0 else 1 + 3)
        assert o["group_grad_ok"]
        # ranks still stepping at each of rank r's steps: 4 for two steps, then one fewer
        assert o["join_counts"] == [4.0, 4.0, 3.0, 2.0, 1.0][:r + 2]
        assert o["last"] == 3 and o["same_weights"]

"""The edgefleet edge agent: V2 inference endpoint, scheduler, offload, fleet link, telemetry and reconciler.

Layers, bottom first; a module imports its own group or a lower layer, never a peer (tests/test_layering.py):

1. `errors`, `config`, `metrics`, `store`
2. `probe`
3. `scheduler/` | `offload/`
4. `serving/` (core, registry, admission, stats)
5. `http/` | `fleet/` | `reconcile/` (reconcile may use fleet: it reports through the device link)
6. `app` (the one module that wires the agent together)
7. `cli`, `doctor`, `__main__`
"""

import os as _os

# numpy's OpenBLAS starts a worker per core that busy-waits for the next BLAS call: an agent serving a few
# requests a second held half a core for nothing (measured in the demo). The agent uses numpy for small array
# work only, so one BLAS thread unless the operator says otherwise; read once, when numpy is first imported
# (the safety cell's supervisor also sets it, with OpenMP's passive wait, for both of its processes).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

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

__version__ = "0.1.0"

"""The whole stack as local processes, for the demo, the benchmarks and the tests (run from the repo root).

Modules: `procs` (child processes in their own groups, always stopped; ready-waits, free ports), `broker_config`
(mosquitto's config rendered from deploy/mosquitto), `broker` (the mosquitto child process), `stack` (hub, pool,
claims, agents and their TOML, through the real CLIs), and `demo` (`python -m deploy.local.demo`).
"""

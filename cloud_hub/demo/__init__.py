"""`cloud-hub demo`: the whole system on one machine, as child processes, in about two minutes.

See docs/demo.md. Modules: `procs` (child processes, always stopped), `broker` (mosquitto from the
production config), `fleet` (hub, pool, claims, agents), `rollout` (models push, rollouts create),
`traffic` (the load generator), `state` + `view` (live view and summary), `scenario` (the steps), `cli` (the
flags), `run` (signals, the workdir, the live view, --keep-running).
"""

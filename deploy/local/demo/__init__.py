"""The demo: the whole system on one machine, as child processes, in about two minutes.

`python -m deploy.local.demo` (or `make demo`); see docs/demo.md. Built on the local-stack harness
(`deploy.local.procs`, `broker`, `stack`). Modules: `fleet` (the devices, their pipelines and traffic, the
rollout), `traffic` (the load generator), `agentmetrics` (the agents' own counts), `state` + `view` (live view
and summary), `scenario` (the steps), `run` (signals, the workdir, the live view, --keep-running), and
`__main__` (the flags).
"""

"""The safety cell: safety-class pipelines in a process of their own (own listener, runtime sessions, OS
priority), next to the main process that serves everything else, under a small supervisor.

`roles` splits one config into the two processes' configs, `priority` applies the OS settings in a child,
`supervisor` binds the listeners and runs and restarts both, `follow` keeps the cell on the store's active
versions, `routes` are the cell's control endpoints and `forward` is the main process's side of them.
"""

"""The trio shell: the sockets, tasks and files around the kernel model.

What lives here: the server (datagrams in, the model's answers out), the per-client outboxes
that emulate the netlink receive buffer, the per-CPU broadcast tasks with their reader/writer
locks, the control socket, the runner that plays a scenario's timeline on a clock, the watch
on the ports directory, addressing rules, the busy-poll, who counts as privileged, and the
mirror of the host's /proc.

What must not: rules of the kernel (`tsemu.emulator.model` decides; this layer only carries
out) and the scenario format (`tsemu.emulator.scenario`). This layer may import both.
"""

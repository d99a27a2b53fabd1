"""Netlink clients the shim tests run unmodified (C and Python), and the harness that runs them
against tsemu (through the LD_PRELOAD shim) and against the host kernel."""

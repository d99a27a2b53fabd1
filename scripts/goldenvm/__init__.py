"""Boot Debian's own kernels under QEMU and capture their taskstats replies (`make golden KERNEL=`).

What lives here, one concern a module:

- `suites`: which Debian suite ships which kernel generation, and where the mirror is;
- `apt`: apt-get run on a private sources list and private state (the system's apt untouched);
- `kernelpkg`: a kernel image package unpacked, its release, its vmlinuz, the modules 9p needs;
- `cpio`: the newc archive format an initramfs is, written from Python;
- `initramfs`: the guest's /init (busybox) and the archive around it;
- `qemu`: the command line and the boot, under a timeout, with the console kept;
- `capture`: the guest's result read back without trusting it, then stored in tests/golden.

Nothing here is imported by tsemu or its tests' default run: it is a tool for refreshing the
golden files, and the optional `vm` test drives it as a subprocess.
"""

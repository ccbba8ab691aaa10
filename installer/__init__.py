"""Installer templates (systemd unit, desktop entry, Task Scheduler XML, install.ps1),
shipped in the wheel as ``nscmonitor.installer`` so ``nscmonitor service install`` works from
any installation, not only from a source checkout."""

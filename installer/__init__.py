"""Installing the daemon as a service: the systemd unit (``systemd.py``) and the Windows
Task Scheduler task (``task_scheduler.py``), rendered from the templates beside them
(``linux/``, ``windows/``, plus ``install.ps1`` and the PyInstaller spec). Shipped in the wheel
as ``nscmonitor.installer`` so ``nscmonitor service install`` works from any installation."""

"""nscmonitor: early, live readouts of neural stem cell differentiation beside the microscope."""

__version__ = "0.1.0"

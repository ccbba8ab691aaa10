"""Running the instrument: health and doctor checks, systemd notifications, runtime packages."""

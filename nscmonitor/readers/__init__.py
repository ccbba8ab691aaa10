"""Reading instrument files, read-only: ``decode`` (one plane of any supported file, checked
before it is decoded) and ``formats`` (stacks and containers: OME-TIFF, ND2, CZI, OME-Zarr).
Below both intake (which looks inside containers and plates) and scoring (which decodes), and
shared with training, calibration and the dashboard's image view."""

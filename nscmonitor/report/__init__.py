"""Reports for R/pandas/Prism: tidy CSV per experiment."""

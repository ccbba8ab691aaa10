"""Persistence. SQLAlchemy models never leave this package: readers get dataclasses."""

"""Persistence: the only package that knows the database.

Every ORM model, session and write stays in here; everyone else calls a named function or
``Writer``/``Repo`` method and gets plain dataclasses back (``docs/architecture.md``).
"""

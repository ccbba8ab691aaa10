"""The ground floor: plain data, pure rules and small utilities every layer may use.

Nothing here imports another part of nscmonitor, so intake, scoring, the store, the faces and
the optional packages can all depend on it without cycles.
"""

"""Decode -> QC -> tiles -> classify -> aggregate: one module per step (see DESIGN §2)."""

"""Scheduled retraining: labels in, candidate trained in a subprocess, gated, promoted."""

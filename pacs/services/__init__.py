"""Imaging-side domain services (MPPS, image index, order matching, VNA routing)."""

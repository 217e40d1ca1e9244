"""Magnetic tile defect detection."""

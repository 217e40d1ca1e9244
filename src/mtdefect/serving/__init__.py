"""HTTP serving helpers for service.py: settings, request parsing, the model runtime, API schemas.

Imports the inference library only (never Lightning, the data pipeline or training code).
"""

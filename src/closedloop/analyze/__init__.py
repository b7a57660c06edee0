"""Analyze: metrics per segment, drift detection and issue clustering (built by later work)."""

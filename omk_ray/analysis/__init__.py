"""Comparison of variants with a baseline: scoreboard, agreement, tokens, anomalies, domains, reports."""

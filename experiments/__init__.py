"""Scenarios, the runner and the results directory."""

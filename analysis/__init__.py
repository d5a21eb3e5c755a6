"""Analysis of results directories: tshark into pandas, metrics, figures, report."""

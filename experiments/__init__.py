"""What one run does: configuration, data, training, metrics, probes and plots."""

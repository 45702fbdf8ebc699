"""The detector network, its shallow-statistics regularizer and the training loop."""

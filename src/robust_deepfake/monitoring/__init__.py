"""Watching registered models after they ship: scheduled re-evaluation and drop alerts."""

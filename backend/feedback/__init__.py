"""Feedback states of the click path: the predictor's state after each click, keyed by the click prefix."""

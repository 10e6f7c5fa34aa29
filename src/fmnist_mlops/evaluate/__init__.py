"""The ``evaluate`` stage's scoring, its figures, and the champion's HTML report."""

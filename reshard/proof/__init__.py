"""Proof that the targets hold what they should: verification, reconciliation, the continuous check, shadow reads and the catch-up proof."""

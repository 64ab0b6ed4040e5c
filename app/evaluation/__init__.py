"""Evaluation: run a benchmark through the runtime, score and report it, re-score stored runs."""

"""A GRPO recipe small enough for the tiny checkpoint on CPU: a few steps per stage, distinct β/γ
per stage so a test can tell which stage trained."""

TINY_RECIPE = """\
role: attending
use_peft: false
learning_rate: 1.0e-4
num_generations: 4
completions_per_step: 8
max_completion_length: 6
logging_steps: 1
progress_bar: false
stages:
  - {name: easy, beta: 0.1, gamma: 0.2}
  - {name: medium, beta: 0.3, gamma: 0.4}
  - {name: hard, beta: 0.5, gamma: 0.6}
"""

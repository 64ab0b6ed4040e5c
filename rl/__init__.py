"""Training and rewards: curriculum-ordered GRPO over the graph's logged trajectories."""

import warnings

# peft (``PeftModel``) and TRL (generation during training) read transformers' deprecated
# ``is_gradient_checkpointing`` property; the warning names their code, not ours, and would print on
# every ``ask`` with an adapter and every ``train``. Only that message is silenced.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

"""Reinforcement learning from feedback (book ch. 8): PPO and GRPO against a reward.

``losses`` (KL estimators, GAE, whitening, PPO's clipped losses, GRPO's group advantages and
loss) are pure functions; ``rollout`` samples and scores answers; ``ppo`` and ``grpo`` each
make one step; ``trainer`` runs the steps with checkpoints; ``run.finetune_rl`` is the whole
run as one call (CLI ``scratchllm finetune ppo``).
"""

from scratchllm.finetune.rl.reward import FunctionReward, RewardSource, load_reward_fn
from scratchllm.finetune.rl.run import RLResult, finetune_rl
from scratchllm.finetune.rl.settings import RLSettings

__all__ = ["FunctionReward", "RLResult", "RLSettings", "RewardSource", "finetune_rl",
           "load_reward_fn"]

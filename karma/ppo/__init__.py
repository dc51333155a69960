"""RLHF PPO: pure tensor math (core.py) and the rollout buffer (rollout.py)."""

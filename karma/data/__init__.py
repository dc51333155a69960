"""Reddit data: Pushshift dumps -> reward-model examples and PPO prompt sets (see data_prep.py)."""

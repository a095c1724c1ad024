"""Fine-tuning: the shared loop (`base.FinetuneAgent`), the on-policy loop (`onpolicy.OnPolicyAgent`), its rollout
buffer (`buffer`), the running reward scaler (`reward_scaling`), policy loading (`loading`) and one file per
algorithm (`ppo`)."""

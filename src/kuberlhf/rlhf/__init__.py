"""Our PPO, the algorithm library: the math (:mod:`.ppo_core`), the rollout batch (:mod:`.rollout`), the value
model (:mod:`.value`), the learners (:mod:`.learner`: DDP or one DeepSpeed engine) and the resumable loop
(:mod:`.loop`). It never imports the stages: ``kuberlhf.stages.ppo`` holds PPO's config and runs the loop."""

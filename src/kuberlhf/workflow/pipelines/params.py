"""The pipelines' parameters that several of them share, with their descriptions (the Kubeflow UI shows them),
in one table: :func:`described` writes a pipeline function's docstring ``Args`` from it and from the
pipeline's own parameters, and refuses a parameter described nowhere."""

from __future__ import annotations

import inspect
from collections.abc import Callable

# parameter -> its description; {policy} is the trained policy the pipeline reports on (PPO, DPO, ReST)
SHARED = {
    "mode": "Where the training stages run. local runs each stage inside its pipeline step (torchrun when procs > 1); pytorchjob makes each step launch a PyTorchJob for its stage and wait for it; trainjob the same with a Kubeflow Trainer v2 TrainJob.",
    "procs": "Processes per training stage in local mode (torchrun --nproc_per_node); in the pytorchjob and trainjob modes the cluster settings decide.",
    "sft_config": "SFT config file (a path in the image, e.g. configs/sft/opt-1.3b-qlora.yaml, or a file of the kuberlhf-config ConfigMap).",
    "sft_overrides": "SFT key=value overrides, e.g. [\"training.max_steps=500\", \"finetune=lora\"].",
    "sft_data": "SFT training data (question/response, chat messages or prompt/completion rows): a .jsonl/.json/.parquet file or folder, s3:// URI, HF dataset, Deep Lake or demo:// source; empty = the SFT config's data.train. The SFT data step validates every row and hands the SFT step a Dataset.",
    "reward_config": "Reward-model config file (configs/reward/...).",
    "reward_overrides": "Reward-model key=value overrides, e.g. [\"training.max_steps=500\", \"data.on_bad_row=skip\"].",
    "reward_data": "Reward-model preference pairs (prompt/chosen/rejected or hh-rlhf rows), e.g. s3://bucket/hh-rlhf/train.jsonl; empty = the reward config's data.train.",
    "ppo_config": "PPO config file (configs/ppo/...); its policy and reward model are the outputs of the earlier steps.",
    "ppo_overrides": "PPO key=value overrides, e.g. [\"training.max_steps=200\", \"ppo.kl_coef=0.1\"].",
    "ppo_prompts": "PPO training prompts (prompt, question or hh-rlhf rows); empty = the PPO config's data.train.",
    "generate_config": "Candidate generation config (configs/generate/...): K candidates per prompt and how they are sampled.",
    "generate_prompts": "Prompts to write candidates for (any data source); empty = the generation config's data.train.",
    "generate_overrides": "Generation key=value overrides, e.g. [\"sampling.num_candidates=6\", \"sampling.temperature=0.9\"].",
    "eval_prompts": "Held-out prompts of the evaluation (any data source: demo://, .jsonl, s3://, a HF dataset).",
    "gold_eval": "Score the SFT and final policies with the built-in task's gold judge (only meaningful for demo:// prompts).",
    "report_samples": "Held-out prompts whose SFT and {policy} responses the report shows side by side.",
    "seed": "Sampling seed of the evaluation (both policies see the same prompts and seed).",
}


def described(summary: str, policy: str = "PPO", **own: str) -> Callable:
    """Give a pipeline function the docstring KFP reads its description and its parameters' from: ``summary``,
    then ``Args`` for each parameter of its signature, from ``own`` or else :data:`SHARED`."""

    def apply(func: Callable) -> Callable:
        names = list(inspect.signature(func).parameters)
        missing = [n for n in names if n not in own and n not in SHARED]
        if missing:
            raise TypeError(f"pipeline {func.__name__}: no description for {missing}")
        unknown = sorted(set(own) - set(names))
        if unknown:
            raise TypeError(f"pipeline {func.__name__}: described but not a parameter: {unknown}")
        args = "".join(f"    {n}: {own.get(n) or SHARED[n].format(policy=policy)}\n" for n in names)
        func.__doc__ = f"{summary}\n\nArgs:\n{args}"
        return func

    return apply

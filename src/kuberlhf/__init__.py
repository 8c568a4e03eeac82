"""kuberlhf: Kubernetes-native RLHF (SFT, reward model, PPO, DPO) on Kubeflow."""

__version__ = "0.1.0"

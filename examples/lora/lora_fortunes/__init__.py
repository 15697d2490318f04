"""Federated LoRA fine-tuning of a small causal language model on Debian's fortunes."""

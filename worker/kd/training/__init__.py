"""The one training loop (`trainer.Trainer`) and its checkpoints; tasks plug in as adapters."""

"""Task adapters: one per task kind, each telling the one `Trainer` (worker.kd.training)
how its student is fed, what its loss reads and how it is validated."""

"""The report: one versioned model (`schema`, torch-free: the API serves it), built from a
job's measurements, summarised in one sentence and rendered into the model card
(`summary`), with the run's metrics kept for metrics.csv (`metrics`)."""

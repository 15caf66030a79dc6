"""Transformer distillation: the DistilBERT recipe for Hugging Face teachers.

    module      what it does                                           imports torch
    layout      what a model-directory ZIP holds (task, sizes, files)  no (the API uses it)
    textdata    JSONL / plain-text datasets, read                      no (the API uses it)
    data        token ids of the training and validation texts, padded per batch
    models      load the teacher offline; build from_teacher/hf students; pooling
    objective   the job's loss terms on transformer outputs (layer maps, token masks)
    measure     validation outputs, the task's quality measure, timings

A transformer job is prepared and run by `worker.kd.tasks.transformer_job` and trained by
the one `Trainer` (worker.kd.training) through its task's adapter (worker.kd.tasks.transformer).
Nothing is downloaded: models load with `local_files_only=True` from the extracted ZIP,
and only safetensors weights are read (a `pytorch_model.bin` pickle is refused).
"""

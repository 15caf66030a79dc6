"""Transformer distillation: the DistilBERT recipe for Hugging Face teachers.

    module      what it does                                           imports torch
    layout      what a model-directory ZIP holds (task, sizes, files)  no (the API uses it)
    textdata    JSONL / plain-text datasets, read and sniffed          no (the API uses it)
    models      load the teacher offline; build from_teacher/hf students; pooling
    objective   the job's loss terms on transformer outputs (layer maps, token masks)
    teacher_outputs  the teacher's outputs on the training texts, computed once, cached
    train       the training loop: schedule, checkpoints, exact resume
    engine      prepare and distill a transformer job (student, baseline, outputs, report)

`worker.kd.engine` hands a job over to `engine` when its teacher is a model-directory ZIP.
Nothing is downloaded: models load with `local_files_only=True` from the extracted ZIP,
and only safetensors weights are read (a `pytorch_model.bin` pickle is refused).
"""

"""Transformer distillation: the DistilBERT recipe for Hugging Face teachers.

    module      what it does                                           imports torch
    layout      what a model-directory ZIP holds (task, sizes, files)  no (the API uses it)
    textdata    JSONL (text, prompt/completion, chat) / plain text      no (the API uses it)
    data        token ids of the training, selection and evaluation texts, padded per
                batch, with the completion-only loss mask
    models      load the teacher offline; build from_teacher/hf students; pooling
    objective   the job's loss terms on transformer outputs (layer maps, token masks)
    topk        top-k teacher targets and the k + 1 buckets a KD term compares
    measure     outputs on held-out texts, quality, perplexity, samples, timings

A transformer job is prepared and run by `worker.kd.tasks.transformer_job` and trained by
the one `Trainer` (worker.kd.training) through its task's adapter (worker.kd.tasks.transformer).
Nothing is downloaded: models load with `local_files_only=True` from the extracted ZIP,
and only safetensors weights are read (a `pytorch_model.bin` pickle is refused).
"""

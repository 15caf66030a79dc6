"""Dataset readers, one module per format; `splits.load_dataset` picks one by the format
`worker.kd.formats` sniffs, and splits the samples for training and validation.

`layout` and `table` import neither torch nor Pillow (nor does `worker.kd.formats`): the
API's upload checks use them, so a file is judged by the same rules when it is uploaded and
when a job reads it.
"""

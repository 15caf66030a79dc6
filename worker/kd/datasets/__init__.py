"""Dataset readers, one module per format; `worker.kd.data.load_dataset` picks one.

`sniff`, `layout` and `table` import neither torch nor Pillow: the API's upload checks use
them, so a file is judged by the same rules when it is uploaded and when a job reads it.
"""

"""The files of a run directory (``run.out_dir``), named once (no torch import: the study driver
reads these paths without loading the trainer)."""

CHECKPOINT_DIR = "checkpoint"  # <out_dir>/checkpoint/state.pt: the resumable training state
STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"  # <out_dir>/model.pt: the final weights + architecture facts (a teacher's file)

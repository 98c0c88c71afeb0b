"""The files every finished run directory holds (tests compare a run's listing with it)."""

RUN_FILES = frozenset(
    {
        "config.json",
        "environment.json",
        "metrics.jsonl",
        "summary.json",
        "train_state.msgpack",
        "curves.png",
        "status.json",
        "example.py",
        "identity.json",
        "checkpoints",
    }
)

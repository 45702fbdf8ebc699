"""One module per DVC stage: the body each stages/<name>.py script calls."""

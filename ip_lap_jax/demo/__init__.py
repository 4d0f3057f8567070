"""The end-to-end demo on built-in data: synthetic clips, preprocessing, smoke training,
held-out evaluation and inference (`run`), and its lip-openness report (`evaluation`)."""

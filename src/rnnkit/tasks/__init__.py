"""Tasks: each owns its data, model construction, loss, metrics and what the commands show."""

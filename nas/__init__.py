"""The user's commands: the ``nas`` CLI and, as they land, the search drivers, export and fine-tuning."""

"""The shipped small model world: language, model, SAEs and tasks."""

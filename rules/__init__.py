"""The shipped rule packs (YAML) and their schema: data, read through importlib.resources."""

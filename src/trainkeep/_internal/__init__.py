"""Private: no stable API; import from `trainkeep` and its documented modules."""

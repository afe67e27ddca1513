"""The friendly page that visitors get while home is down, and the offline copies it can answer with."""

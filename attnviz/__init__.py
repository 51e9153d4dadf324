"""attnviz."""

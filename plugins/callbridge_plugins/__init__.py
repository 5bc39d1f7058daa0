"""Built-in callbridge plugins."""

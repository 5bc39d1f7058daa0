"""Built-in ref stores."""
